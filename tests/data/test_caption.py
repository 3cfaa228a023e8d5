"""``lorastory data caption`` on tiny random models of every backend: rows, modes, bad inputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorastory.data.caption import PARTIAL_SUFFIX, CaptionConfig, caption_dataset
from lorastory.models.captioners.loader import load_captioner


FAST = ("--max-new-tokens", "6")  # random tiny models never stop on their own


def rows(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("kind", ["blip", "blip2", "florence2", "qwen2_5_vl", "wd14"])
def test_every_backend_captions_every_row(cli, uncaptioned, tiny_captioner, kind):
    style = ["--style", "tags"] if kind == "wd14" else []
    result = cli("data", "caption", str(uncaptioned), "--model", str(tiny_captioner(kind)), "--batch-size", "4",
                 "--trigger", "zzstyle", *style, *FAST)
    assert result.code == 0, result.err
    assert "Captioned 6 pictures" in result.out
    for row in rows(uncaptioned):
        assert row["text"].startswith("zzstyle, ") and len(row["text"]) > len("zzstyle, ")
        assert row["text_before_caption"] == "" and row["caption_model"] == str(tiny_captioner(kind))
    report = json.loads((uncaptioned / "caption_report.json").read_text())
    assert (report["captioned"], report["kept"], report["failed"]) == (6, 0, 0)
    assert not (uncaptioned / ("metadata.jsonl" + PARTIAL_SUFFIX)).exists()


def test_tagger_splits_characters_from_general_tags(tiny_captioner):
    from PIL import Image

    tagger = load_captioner(str(tiny_captioner("wd14")), "cpu")
    tags = tagger.tag([Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 60), (20, 20, 200))])
    names = {name for name, _category in __import__("lorastory.models.captioners.tiny", fromlist=["x"]).WD14_TAGS}
    for found in tags:
        assert all(p >= 0.85 for _, p in found.character) and all(p >= 0.35 for _, p in found.general)
        assert {n for n, _ in found.character + found.general} <= names and found.rating in ("general", "sensitive")
        assert [p for _, p in found.general] == sorted((p for _, p in found.general), reverse=True)


def test_bad_picture_and_unreadable_line_are_reported_and_kept(cli, uncaptioned, tiny_captioner):
    first = sorted((uncaptioned / "images").iterdir())[0]
    first.write_bytes(b"not a picture")
    with open(uncaptioned / "metadata.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"broken\n{"text": "", "image": []}\n')
    before = (uncaptioned / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    result = cli("data", "caption", str(uncaptioned), "--model", str(tiny_captioner("blip")), *FAST)
    assert result.code == 0, result.err
    assert "Captioned 5 pictures" in result.out and "failed 3" in result.out
    after = (uncaptioned / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert after[0] == before[0] and after[-2:] == before[-2:]  # failed rows stay as they were
    reasons = {item["item"].split(":")[0]: item["reason"] for item in
               json.loads((uncaptioned / "caption_report.json").read_text())["failed_items"]}
    assert set(reasons) == {"line 1", "line 7", "line 8"} and "no picture path" in reasons["line 8"]


def test_modes_fill_append_replace(cli, uncaptioned, tiny_captioner):
    model = str(tiny_captioner("blip"))
    lines = rows(uncaptioned)
    lines[0]["text"] = "a hand-written caption"
    (uncaptioned / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")

    assert cli("data", "caption", str(uncaptioned), "--model", model, *FAST).code == 0
    filled = rows(uncaptioned)
    assert filled[0]["text"] == "a hand-written caption" and "caption_model" not in filled[0]
    assert all(r["caption_model"] == model for r in filled[1:])

    again = cli("data", "caption", str(uncaptioned), "--model", model, *FAST)
    assert "Captioned 0 pictures" in again.out and "kept 6" in again.out and rows(uncaptioned) == filled

    assert cli("data", "caption", str(uncaptioned), "--model", str(tiny_captioner("wd14")), "--style", "tags",
               "--mode", "append").code == 0
    appended = rows(uncaptioned)
    assert all(a["text"].startswith(f["text"] + ", ") for a, f in zip(appended, filled))
    assert appended[0]["text_before_caption"] == "a hand-written caption"

    assert cli("data", "caption", str(uncaptioned), "--model", model, "--mode", "replace", *FAST).code == 0
    replaced = rows(uncaptioned)
    assert not replaced[0]["text"].startswith("a hand-written")
    assert replaced[0]["text_before_caption"] == "a hand-written caption"  # the original, not the last caption


class _Counting:
    """Wraps a captioner; counts pictures; stops the run (like a kill) after ``stop_after`` batches."""

    def __init__(self, inner, stop_after: int | None = None) -> None:
        self.inner, self.pictures, self.batches, self.stop_after = inner, 0, 0, stop_after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, images, prompts, options):
        self.pictures += len(images)
        return self.inner.generate(images, prompts, options)


def test_resume_after_a_kill_captions_only_the_rest(uncaptioned, tiny_captioner):
    config = CaptionConfig(model=str(tiny_captioner("blip")), batch_size=2, max_new_tokens=6)
    original = (uncaptioned / "metadata.jsonl").read_bytes()
    first = _Counting(load_captioner(config.model, "cpu"))

    def kill_after_two_batches(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caption_dataset(uncaptioned, config, first, on_progress=kill_after_two_batches)
    assert (uncaptioned / "metadata.jsonl").read_bytes() == original  # nothing half-written
    partial = uncaptioned / ("metadata.jsonl" + PARTIAL_SUFFIX)
    with open(partial, "a", encoding="utf-8") as handle:
        handle.write('{"line": 5, "row": {"te')  # the batch in flight when the process died

    second = _Counting(load_captioner(config.model, "cpu"))
    result = caption_dataset(uncaptioned, config, second)
    assert (result.resumed, result.captioned, second.pictures) == (4, 2, 2)
    assert all(r["text"] and r["caption_model"] == config.model for r in rows(uncaptioned))
    assert not partial.exists()


def test_changed_settings_start_over(uncaptioned, tiny_captioner):
    model = str(tiny_captioner("blip"))

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caption_dataset(uncaptioned, CaptionConfig(model=model, batch_size=3, max_new_tokens=6), on_progress=stop)
    result = caption_dataset(uncaptioned, CaptionConfig(model=model, batch_size=3, trigger="other", max_new_tokens=6))
    assert (result.resumed, result.captioned) == (0, 6)
    assert all(r["text"].startswith("other, ") for r in rows(uncaptioned))


def test_refusals_are_one_line(cli, uncaptioned, tiny_captioner, tmp_path):
    offline = cli("data", "caption", str(uncaptioned), "--model", "someone/not-cached-captioner")
    assert "hf download someone/not-cached-captioner" in offline.error_line("not in the local", "HF_HUB_OFFLINE")

    blip_tags = cli("data", "caption", str(uncaptioned), "--model", str(tiny_captioner("blip")), "--style", "tags")
    blip_tags.error_line("writes sentences, not tags")

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "florence2_custom", "auto_map": {}}))
    cli("data", "caption", str(uncaptioned), "--model", str(remote)).error_line("'florence2_custom'", "without remote code")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((Path(tiny_captioner("blip")) / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    cli("data", "caption", str(uncaptioned), "--model", str(pickled)).error_line("cannot load captioner")
    cli("data", "caption", str(tmp_path / "nowhere")).error_line("no such file")
    assert all(r["text"] == "" for r in rows(uncaptioned))  # nothing was written by a refused run
