"""Progress and Stop through every pass of a recipe with dataset-level ops (near-dedup, selector):
each stage reports its name and counts, and a stop raised from the callback in any stage ends the
run there with nothing written (no result, no temp files, no spools) and an earlier result intact."""

from __future__ import annotations

import json
import tempfile
from collections import Counter

import pytest

from lorastory.data import executor, executor_stages
from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe

DEDUP, TOPK = "document_simhash_deduplicator", "topk_specified_field_selector"
TEXTS = ["a red fox runs through the snowy forest at dawn", "a blue boat drifts on the calm lake at noon",
         "a red fox runs through the snowy forest at dawn", "an old man reads a book by the warm fire",
         "a small bird sings on a wet branch in spring", "a blue boat drifts on the calm lake at noon",
         "two cats sleep on a sunny window sill today", "a tall tower stands alone on the grey hill"]


class StopHere(Exception):
    """What the test's callback raises to stop the run (the web app raises its Cancelled)."""


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """Eight rows (two repeated twice) through a filter, a near-dedup and a top-3 selector;
    one row per progress call, writes reported every two rows, temp folders under tmp_path/tmp."""
    monkeypatch.setattr(executor, "_LOCAL_REPORT_SECONDS", 0.0)
    monkeypatch.setattr(executor, "_CHUNK_LINES", 1)  # worker processes get one row per chunk too
    monkeypatch.setattr(executor_stages, "_REPORT_ROWS", 2)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rows = [{"text": text, "meta": {"score": index}} for index, text in enumerate(TEXTS)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "r.yaml").write_text(
        f"dataset_path: {tmp_path / 'in.jsonl'}\nexport_path: {tmp_path / 'out' / 'result.jsonl'}\nnp: 1\n"
        f"process:\n  - text_length_filter:\n      min_len: 5\n  - {DEDUP}:\n      window_size: 2\n"
        f"  - {TOPK}:\n      field_key: meta.score\n      topk: 3\n", encoding="utf-8")
    return load_recipe(tmp_path / "r.yaml")


def test_every_stage_reports_its_name_and_counts(recipe, tmp_path):
    calls: list[tuple[str, int, int]] = []
    firsts: list[int] = []
    result = run_recipe(recipe, on_progress=firsts.append, on_stage=lambda *call: calls.append(call))
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    assert kept == [TEXTS[7], TEXTS[6], TEXTS[4]] and result.n_output == 3  # top scores among the six distinct
    assert calls == (
        [(f"{DEDUP}: hashing", n, 8) for n in range(1, 9)]
        + [(f"{DEDUP}: selecting", 0, 8), (f"{DEDUP}: selecting", 8, 8)]
        + [(f"{DEDUP}: writing", n, 6) for n in (0, 2, 4, 6)]
        + [(f"{TOPK}: hashing", n, 6) for n in range(1, 7)]
        + [(f"{TOPK}: selecting", 0, 6), (f"{TOPK}: selecting", 6, 6)]
        + [("writing the result", n, 3) for n in (0, 2, 3)]
    )
    assert firsts == list(range(1, 9))  # on_progress still follows the first pass only
    assert not any((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(("stage", "at", "processes", "calls_there"), [
    (f"{DEDUP}: hashing", 3, 2, 3),  # rows from two worker processes
    (f"{DEDUP}: selecting", 8, 1, 2),  # just after the selection
    (f"{DEDUP}: writing", 2, 1, 2),  # 0/6, 2/6
    (f"{TOPK}: hashing", 4, 2, 4),
    ("writing the result", 2, 1, 2),
])
def test_a_stop_in_any_stage_stops_there_and_writes_nothing(recipe, tmp_path, stage, at, processes, calls_there):
    run_recipe(recipe)
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["result.jsonl", "result_report.html", "result_report.json", "result_stats.jsonl"]
    calls: Counter[str] = Counter()

    def on_stage(name: str, done: int, total: int) -> None:
        calls[name] += 1
        if name == stage and done == at:
            raise StopHere

    with pytest.raises(StopHere):
        run_recipe(recipe.model_copy(update={"process": [*recipe.process[:2], {TOPK: {"field_key": "meta.score",
                                                                                       "topk": 2}}]}),
                   processes=processes, on_stage=on_stage)
    stages = list(calls)
    assert stages[-1] == stage and calls[stage] == calls_there
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier result, byte for byte
    assert not any((tmp_path / "tmp").iterdir())  # the spools went with their folder
