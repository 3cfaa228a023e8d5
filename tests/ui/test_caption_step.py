"""The Data tab's Caption step without a browser: caption through a job, edit a caption, refuse a mismatched table."""

from __future__ import annotations

import json

import pytest

from lorastory.errors import DataError
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.ui import actions
from lorastory.ui.jobs import DONE, JobQueue
from lorastory.ui.workspace import PathRefused, Workspace


@pytest.fixture
def ws(tmp_path):
    """A workspace with six toy pictures imported without captions as datasets/raw."""
    ws = Workspace(tmp_path / "ws")
    raw = write_toy_dataset(ws.root / "incoming", count=6, size=48, bad_samples=False).folder
    for text in raw.glob("*.txt"):
        text.unlink()
    with pytest.raises(DataError, match="none of the 6 picture"):  # uncaptioned: refused, no empty dataset left
        actions.import_folder(ws, ws.rel(raw), "raw", "", True)
    assert not (ws.root / "datasets" / "raw").exists()
    assert actions.import_folder(ws, ws.rel(raw), "raw", "", True, allow_empty_caption=True)["written"] == 6
    return ws


def rows(ws):
    lines = (ws.root / "datasets" / "raw" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_caption_edit_and_save(ws):
    dataset = "datasets/raw/metadata.jsonl"
    assert all(not r["text"] for r in rows(ws))
    queue = JobQueue()
    try:
        job = queue.submit("caption", "c", actions.caption_job(ws, dataset, "toy", "sentence", "en", "zzstyle", "fill"))
        job = queue.wait(job.id, 120)
    finally:
        queue.shutdown()
    assert job.status == DONE, job.error
    assert job.result["captioned"] == 6 and job.progress == 1.0 and job.log[-1] == "6/6 pictures"
    table = actions.caption_rows(ws, dataset)
    assert [r[1] for r in table] == [r["text"] for r in rows(ws)]
    assert all(caption.startswith("zzstyle, ") for _name, caption in table)

    table[1][1] = "a hand-written caption"
    before = rows(ws)
    assert actions.save_captions(ws, dataset, table) == 1
    after = rows(ws)
    assert after[1]["text"] == "a hand-written caption"
    assert after[1]["text_before_caption"] == ""  # the original (empty) text, as data caption keeps it
    assert [a for i, a in enumerate(after) if i != 1] == [b for i, b in enumerate(before) if i != 1]

    table[2][0] = "someone-else.png"
    with pytest.raises(DataError, match="line 3: file name 'someone-else.png' does not match"):
        actions.save_captions(ws, dataset, table)
    assert rows(ws) == after


def test_caption_refuses_paths_outside_the_workspace(ws, tmp_path):
    with pytest.raises(PathRefused):
        actions.caption_job(ws, str(tmp_path / "elsewhere"), "toy", "sentence", "en", "", "fill")
    with pytest.raises(PathRefused, match="not a folder inside the workspace"):
        actions.caption_job(ws, "datasets/raw", "../models/x", "sentence", "en", "", "fill")
    for name, model_type in (("blip-here", "blip"), ("a-clip", "clip")):
        (ws.root / "models" / name).mkdir(parents=True)
        (ws.root / "models" / name / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert actions.captioner_choices(ws) == ["toy", "models/blip-here"]  # a CLIP folder is no captioner
