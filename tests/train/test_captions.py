"""Training-time captions: trigger word first, shuffled tags with the first N kept, seeded dropout."""

from __future__ import annotations

from lorastory.train.captions import CaptionSettings, caption_texts, choose_text, fresh_caption, split_tags

TAGS = "1girl, red hair, blue dress, smiling, garden, flowers, sunlight, looking at viewer"


def test_trigger_word_comes_first_once_with_prefix_and_suffix():
    settings = CaptionSettings(trigger_word="sks style", prefix="anime", suffix="best quality")
    assert caption_texts("a cat, sks style, on a mat", settings, seed=0) == ["sks style, anime, a cat, on a mat, best quality"]
    assert caption_texts("", CaptionSettings(trigger_word="sks"), seed=0) == ["sks"]
    # Chinese captions' full-width commas separate tags too, and join them again.
    chinese = caption_texts("二次元，一个女孩，在花园里", CaptionSettings(trigger_word="sks", shuffle=True, keep_tags=1,
                                                                  variants=4), seed=0)
    assert {t.split("，")[0] for t in chinese} == {"sks"} and {t.split("，")[1] for t in chinese} == {"二次元"}
    assert {frozenset(t.split("，")) for t in chinese} == {frozenset(["sks", "二次元", "一个女孩", "在花园里"])}
    assert len(chinese) == 2
    # Nothing to change: the caption is used as it is (and keeps its old cache entry).
    assert caption_texts("a cat,on a mat", CaptionSettings(), seed=0) == ["a cat,on a mat"]


def test_shuffle_keeps_the_first_tags_and_is_reproducible():
    settings = CaptionSettings(trigger_word="sks", shuffle=True, keep_tags=2, variants=12)
    texts = caption_texts(TAGS, settings, seed=7)
    assert 6 <= len(texts) <= 12  # distinct shuffles
    tags = split_tags(TAGS)
    for text in texts:
        got = split_tags(text)
        assert got[:3] == ["sks", "1girl", "red hair"]
        assert sorted(got[3:]) == sorted(tags[2:])
    assert caption_texts(TAGS, settings, seed=7) == texts
    assert caption_texts(TAGS, settings, seed=8) != texts

    # Live captions (text encoders being trained): a fresh shuffle per draw, the same for the same draw.
    live = [fresh_caption(TAGS, settings, seed=7, epoch=0, draw=d) for d in range(30)]
    assert all(split_tags(t)[:3] == ["sks", "1girl", "red hair"] for t in live)
    assert len(set(live)) > 12
    assert live == [fresh_caption(TAGS, settings, seed=7, epoch=0, draw=d) for d in range(30)]
    assert live != [fresh_caption(TAGS, settings, seed=7, epoch=1, draw=d) for d in range(30)]


def test_caption_dropout_rate_over_a_seeded_run():
    draws = [(epoch, draw) for epoch in range(4) for draw in range(1000)]
    for rate in (0.1, 0.5):
        picks = [choose_text(3, rate, seed=3, epoch=e, draw=d) for e, d in draws]
        dropped = sum(p is None for p in picks) / len(picks)
        assert abs(dropped - rate) < 0.03, dropped
        kept = [p for p in picks if p is not None]
        assert all(0.28 < kept.count(k) / len(kept) < 0.39 for k in range(3))  # the cached shuffles evenly
        assert picks == [choose_text(3, rate, seed=3, epoch=e, draw=d) for e, d in draws]
    assert all(choose_text(1, 0.0, 3, 0, d) == 0 for d in range(100))
    live = [fresh_caption(TAGS, CaptionSettings(dropout=0.25), 1, 0, d) for d in range(2000)]
    assert abs(live.count("") / len(live) - 0.25) < 0.03 and set(live) == {"", TAGS}
