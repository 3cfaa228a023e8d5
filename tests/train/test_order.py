"""The sample order: global batches of one bucket, shares per process, resumes with another global batch."""

from __future__ import annotations

import pytest

from lorastory.train.order import (
    batches_before, continued_history, draw_sample, epoch_batches, process_share, sample_seed,
)

# 23 images in two buckets, the first five also with a flipped variant (an epoch uses one of the two).
SAMPLES = [(f"img{i}", (64, 64) if i % 3 else (96, 48)) for i in range(23)] + [(f"img{i}", (64, 64)) for i in range(1, 6) if i % 3]
IMAGES = len({image for image, _ in SAMPLES})


def _flat(order):
    return [i for batch in order for i in batch]


def test_each_image_once_per_epoch_in_one_bucket_batches():
    for global_batch in (1, 4, 6):
        order = epoch_batches(SAMPLES, seed=5, epoch=2, global_batch=global_batch)
        flat = _flat(order)
        assert len(flat) == len(set(flat)) == IMAGES
        assert len({SAMPLES[i][0] for i in flat}) == IMAGES
        assert all(len({SAMPLES[i][1] for i in batch}) == 1 and len(batch) <= global_batch for batch in order)
    assert epoch_batches(SAMPLES, 5, 2, 4) == epoch_batches(SAMPLES, 5, 2, 4)
    assert epoch_batches(SAMPLES, 5, 2, 4) != epoch_batches(SAMPLES, 5, 3, 4)


def test_processes_split_a_global_batch_into_full_batches_of_its_slots():
    batch = [7, 3, 9, 1, 4, 8]
    shares = [process_share(batch, rank, 3, 2) for rank in range(3)]
    assert [indices for indices, _ in shares] == [[7, 3], [9, 1], [4, 8]]
    assert all(weights == [1.0, 1.0] for _, weights in shares)
    assert process_share(batch, 0, 1, 2) == (batch, [1.0] * 6)  # one process takes the whole global batch

    short = [7, 3, 9]  # a bucket's last batch: padded to full batches, the padding weighs nothing
    shares = [process_share(short, rank, 3, 2) for rank in range(3)]
    assert [indices for indices, _ in shares] == [[7, 3], [9, 7], [7, 7]]
    assert [weights for _, weights in shares] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert sum(sum(w) for _, w in shares) == len(short)


def test_resume_with_the_same_global_batch_continues_the_same_order():
    order = epoch_batches(SAMPLES, 1, 0, 4)
    done = sum(len(batch) for batch in order[:3])
    history = continued_history([], 4, done, 4)
    assert history == []
    resumed = epoch_batches(SAMPLES, 1, 0, 4, history)
    assert resumed == order and batches_before(resumed, done) == 3


@pytest.mark.parametrize(("before", "after"), [(4, 2), (2, 6), (6, 1)])
def test_resume_with_another_global_batch_neither_skips_nor_repeats(before, after):
    order = epoch_batches(SAMPLES, 1, 0, before)
    done = sum(len(batch) for batch in order[:2])
    history = continued_history([], before, done, after)
    assert history == [(before, done)]
    resumed = epoch_batches(SAMPLES, 1, 0, after, history)
    start = batches_before(resumed, done)
    assert resumed[:start] == order[:2]  # the part already trained, replayed
    assert sorted(_flat(resumed)) == sorted(_flat(order))  # then every other sample of the epoch, once
    assert all(len(batch) <= after for batch in resumed[start:])

    # A second change within the same epoch stacks on the first.
    done_twice = done + sum(len(batch) for batch in resumed[start : start + 1])
    again = epoch_batches(SAMPLES, 1, 0, before, continued_history(history, after, done_twice, before))
    assert again[: start + 1] == resumed[: start + 1]
    assert sorted(_flat(again)) == sorted(_flat(order))


def test_a_position_inside_a_batch_is_refused():
    order = epoch_batches(SAMPLES, 1, 0, 4)
    with pytest.raises(ValueError, match="batch boundary"):
        batches_before(order, len(order[0]) + 1)


def test_sample_seeds_differ_per_sample_and_epoch():
    seeds = {sample_seed(0, epoch, index) for epoch in range(3) for index in range(50)}
    assert len(seeds) == 150
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(1, 1, 2)


def test_repeats_draw_each_image_that_many_times_per_epoch_and_resume_exactly():
    repeats = [3 if SAMPLES[i][0] in ("img1", "img2") else 1 for i in range(len(SAMPLES))]
    order = epoch_batches(SAMPLES, 4, 1, 4, repeats=repeats)
    draws = _flat(order)
    assert len(draws) == len(set(draws)) == IMAGES + 4  # distinct draws (distinct noise seeds)
    seen = [SAMPLES[draw_sample(d, len(SAMPLES))][0] for d in draws]
    assert seen.count("img1") == seen.count("img2") == 3 and seen.count("img3") == 1
    assert all(len({SAMPLES[draw_sample(d, len(SAMPLES))][1] for d in batch}) == 1 for batch in order)
    # No repeats: the draws are the sample indices, as before repeats existed.
    assert epoch_batches(SAMPLES, 4, 1, 4, repeats=[1] * len(SAMPLES)) == epoch_batches(SAMPLES, 4, 1, 4)
    # Resumed with another global batch: the rest of the epoch, nothing skipped or repeated.
    done = sum(len(batch) for batch in order[:3])
    history = continued_history([], 4, done, 2)
    resumed = epoch_batches(SAMPLES, 4, 1, 2, history, repeats)
    assert resumed[:3] == order[:3] and sorted(_flat(resumed)) == sorted(draws)
