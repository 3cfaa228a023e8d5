"""Progress and Stop through every pass of a recipe with dataset-level ops (near-dedup, selector):
each stage reports its name and counts, and a stop raised from the callback in any stage ends the
run there with nothing written (no result, no temp files, no spools) and an earlier result intact."""

from __future__ import annotations

import json
import tempfile

import pytest

from lorastory.data import executor, executor_stages
from lorastory.data.executor import run_recipe
from lorastory.data.ops import document_minhash_deduplicator as minhash
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


def _by_stage(calls: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    stages: dict[str, list[tuple[int, int]]] = {}
    for name, done, total in calls:
        stages.setdefault(name, []).append((done, total))
    return stages


@pytest.mark.parametrize("dedup", [DEDUP, "document_minhash_deduplicator"])
def test_every_stage_reports_its_name_and_counts(recipe, tmp_path, monkeypatch, dedup):
    monkeypatch.setattr(minhash, "_STEP_ROWS", 2)
    recipe = recipe.model_copy(update={"process": [recipe.process[0], {dedup: None}, recipe.process[2]]})
    calls: list[tuple[str, int, int]] = []
    firsts: list[int] = []
    result = run_recipe(recipe, on_progress=firsts.append, on_stage=lambda *call: calls.append(call))
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    assert kept == [TEXTS[7], TEXTS[6], TEXTS[4]] and result.n_output == 3  # top scores among the six distinct
    stages = _by_stage(calls)
    assert list(stages) == [f"{dedup}: hashing", f"{dedup}: grouping", f"{dedup}: writing",
                            f"{TOPK}: hashing", f"{TOPK}: selecting", "writing the result"]
    assert [c[:2] for c in calls if c[0] in (stages.keys() - {f"{dedup}: grouping"})] == [
        *[(f"{dedup}: hashing", n) for n in range(1, 9)], *[(f"{dedup}: writing", n) for n in (0, 2, 4, 6)],
        *[(f"{TOPK}: hashing", n) for n in range(1, 7)], (f"{TOPK}: selecting", 0), (f"{TOPK}: selecting", 6),
        *[("writing the result", n) for n in (0, 2, 3)]]
    totals = {name: {total for _done, total in counts} for name, counts in stages.items()}
    assert list(totals.values()) == [{8}, {8}, {6}, {6}, {6}, {3}]
    # The clustering reports steps between its start and its end (each a Stop point).
    grouping = [done for done, _total in stages[f"{dedup}: grouping"]]
    assert len(grouping) > 2 and grouping[0] == 0 and grouping[-1] == 8 and grouping == sorted(grouping)
    assert firsts == list(range(1, 9))  # on_progress still follows the first pass only
    assert not any((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(("stage", "at", "processes", "calls_there"), [
    (f"{DEDUP}: hashing", 3, 2, 3),  # rows from two worker processes
    (f"{DEDUP}: grouping", "within", 1, None),  # a step of the clustering
    (f"{DEDUP}: grouping", 8, 1, None),  # just after it
    (f"{DEDUP}: writing", 2, 1, 2),  # 0/6, 2/6
    (f"{TOPK}: hashing", 4, 2, 4),
    ("writing the result", 2, 1, 2),
])
def test_a_stop_in_any_stage_stops_there_and_writes_nothing(recipe, tmp_path, stage, at, processes, calls_there):
    run_recipe(recipe)
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["result.jsonl", "result_report.html", "result_report.json", "result_stats.jsonl"]
    calls: list[tuple[str, int, int]] = []

    def on_stage(name: str, done: int, total: int) -> None:
        calls.append((name, done, total))
        if name == stage and (done == at or (at == "within" and 0 < done < total)):
            raise StopHere

    with pytest.raises(StopHere):
        run_recipe(recipe.model_copy(update={"process": [*recipe.process[:2], {TOPK: {"field_key": "meta.score",
                                                                                       "topk": 2}}]}),
                   processes=processes, on_stage=on_stage)
    stages = _by_stage(calls)
    assert list(stages)[-1] == stage and calls[-1][0] == stage  # nothing after the stage it stopped in
    if calls_there is not None:
        assert len(stages[stage]) == calls_there
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier result, byte for byte
    assert not any((tmp_path / "tmp").iterdir())  # the spools went with their folder
