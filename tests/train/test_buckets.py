"""Aspect-ratio buckets."""

from lorastory.train.buckets import assign_bucket, bucket_sizes, small_buckets


def test_buckets_are_multiples_of_the_step_within_the_area():
    sizes = bucket_sizes(1024, 64)
    assert (1024, 1024) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024 for w, h in sizes)
    ratios = [w / h for w, h in sizes]
    assert ratios == sorted(ratios) and min(ratios) >= 0.25 and max(ratios) <= 4


def test_images_go_to_the_closest_ratio():
    sizes = bucket_sizes(1024, 64)
    assert assign_bucket((2000, 2000), sizes) == (1024, 1024)
    wide = assign_bucket((1920, 1080), sizes)
    assert abs(wide[0] / wide[1] - 16 / 9) < 0.1
    tall = assign_bucket((900, 2000), sizes)
    assert tall[0] < tall[1]


def test_small_buckets_are_reported():
    assert small_buckets([(64, 64), (64, 64), (128, 64)], 2) == {(128, 64): 1}
