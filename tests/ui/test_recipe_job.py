"""The Data tab's "Run recipe" as a queued job, without a browser: queued → done with the result views,
per-row progress and Stop (nothing half-written, the previous result kept), identical and clashing runs
refused, and a failing recipe's one-line error."""

from __future__ import annotations


import pytest
from PIL import Image

from lorastory.data import executor, executor_stages
from lorastory.ui.actions import recipe_run
from lorastory.ui.jobs import CANCELLED, DONE, FAILED, JobQueue



def write_images(folder, sizes, captions):
    """Plain PNGs of the given sizes with same-name .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, ((width, height), caption) in enumerate(zip(sizes, captions)):
        Image.new("RGB", (width, height), (40 * index, 90, 160)).save(folder / f"img{index:02d}.png")
        (folder / f"img{index:02d}.txt").write_text(caption, encoding="utf-8")

RECIPE = ("dataset_path: datasets/d/metadata.jsonl\nexport_path: curated/{out}/result.jsonl\nnp: 1\nimage_key: image\n"
          "process:\n  - image_shape_filter:\n      min_width: 64\n      min_height: 64\n")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app over a workspace with a six-picture dataset (two of them too small for RECIPE)."""
    from lorastory.ui.app import create_app

    root = tmp_path_factory.mktemp("recipejob") / "ws"
    write_images(root / "incoming", [(96, 80), (80, 96), (96, 96), (72, 72), (32, 32), (40, 24)],
                 ["one", "two", "three", "four", "tiny one", "tiny two"])
    demo = create_app(root, build_default_model=False)
    data = demo.lorastory_tabs["data"]
    assert "imported 6 image(s)" in data.on_import_folder("incoming", "d", "", True, False)[0]
    yield demo
    demo.lorastory.jobs.shutdown()


def stop_at_row(monkeypatch, queue: JobQueue, row: int, seen: list[str], stage: str = "rows") -> None:
    """Run the real executor one row per progress call, pressing Stop once ``row`` rows of ``stage`` are
    done; ``seen`` gets the job's progress message after each call."""
    real = recipe_run.run_recipe
    monkeypatch.setattr(executor, "_LOCAL_REPORT_SECONDS", 0.0)
    monkeypatch.setattr(executor_stages, "_REPORT_ROWS", 1)

    def run(recipe, processes=None, on_progress=None, on_stage=None):
        def progress(name: str, done: int, total: int) -> None:
            if (name, done) == (stage, row):
                queue.cancel(queue.latest("recipe").id)
            on_stage(name, done, total)  # the job's stage(): raises Cancelled once Stop was pressed
            seen.append(queue.latest("recipe").message)
        return real(recipe, processes=processes, on_progress=on_progress, on_stage=progress)

    monkeypatch.setattr(recipe_run, "run_recipe", run)


def test_queued_then_done_shows_the_result(app, blocked):
    data, queue, ws = app.lorastory_tabs["data"], app.lorastory.jobs, app.lorastory.ws
    release = blocked(queue)
    try:
        queued = data.on_run_recipe(RECIPE.format(out="c"), "c", 0)
        assert queued.startswith("**Queued:**") and "recipe c: queued (1 job(s) ahead)" in queued
        # The same click again, and another recipe writing the same result, are refused in one line.
        again = data.on_run_recipe(RECIPE.format(out="c"), "c", 0)
        assert again.startswith("**Error:** the same work is already queued as job #")
        clash = data.on_run_recipe(RECIPE.format(out="c").replace("min_width: 64", "min_width: 8"), "c-wide", 0)
        assert "writes curated/c/result.jsonl; wait for it, stop it, or choose another name" in clash
        state, status, *_views = data.poll_recipe({})
        assert "**Queued:**" in status
    finally:
        release.set()
    job = queue.wait(queue.latest("recipe").id, 60)
    assert job.status == DONE
    state, status, table, kept, dropped, skipped, report, export = data.poll_recipe(state)
    assert "6 in → 4 kept, 0 skipped (`curated/c/result.jsonl`" in status
    assert [row[:5] for row in table] == [["(read)", 6, 6, 0, 0], ["image_shape_filter", 6, 4, 2, 0]]
    assert len(kept) == 4 and len(dropped) == 2 and all("image_shape_filter" in why for _image, why in dropped)
    assert "<iframe" in report and export["value"] == "curated/c/result.jsonl"
    assert len((ws.root / "curated" / "c" / "result.jsonl").read_text(encoding="utf-8").splitlines()) == 4
    # Nothing changed since: the next tick sends nothing.
    assert all(not isinstance(v, (str, list)) for v in data.poll_recipe(state)[1:])


def test_stop_between_rows_leaves_no_half_written_result(app, monkeypatch):
    data, queue, ws = app.lorastory_tabs["data"], app.lorastory.jobs, app.lorastory.ws
    folder = ws.root / "curated" / "s"
    seen: list[str] = []
    stop_at_row(monkeypatch, queue, 3, seen)
    assert data.on_run_recipe(RECIPE.format(out="s"), "s", 0).startswith("**Queued:**")
    job = queue.wait(queue.latest("recipe").id, 60)
    assert job.status == CANCELLED and [m.split(",")[0] for m in seen] == ["rows 1/6", "rows 2/6"]  # one row at a time
    assert job.message.startswith("stopped after 3/6 rows; curated/s/result.jsonl was not written")
    assert not folder.exists() or not any(folder.iterdir())  # no result, stats, report or temp file
    status = data.poll_recipe({})[1]
    assert status.startswith("**Cancelled:**") and "was not written" in status

    # A finished result, then a stopped re-run: the previous result stays, byte for byte.
    monkeypatch.setattr(recipe_run, "run_recipe", executor.run_recipe)
    queue.wait(queue.submit("recipe", "full", recipe_run.recipe_job(ws, recipe_run.plan_recipe(
        ws, RECIPE.format(out="s"), "s"))).id, 60)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "result.jsonl" in before and len(before["result.jsonl"].splitlines()) == 4
    # Rows handed on one at a time give the same result and stats as whole chunks.
    monkeypatch.setattr(executor, "_LOCAL_REPORT_SECONDS", 60.0)
    recipe_run.run_recipe_text(ws, RECIPE.format(out="whole"), "whole")
    for name in ("result.jsonl", "result_stats.jsonl"):
        assert before[name] == (ws.root / "curated" / "whole" / name).read_bytes()
    stop_at_row(monkeypatch, queue, 1, [])
    data.on_run_recipe(RECIPE.format(out="s").replace("min_width: 64", "min_width: 8"), "s", 0)
    job = queue.wait(queue.latest("recipe").id, 60)
    assert job.status == CANCELLED and "curated/s/result.jsonl still holds the previous result" in job.message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_failing_recipe_says_why_in_one_line(app):
    data, queue, ws = app.lorastory_tabs["data"], app.lorastory.jobs, app.lorastory.ws
    # Refused before it is queued: a dataset that is not there.
    missing = data.on_run_recipe(RECIPE.format(out="f").replace("datasets/d", "datasets/gone"), "f", 0)
    assert missing.startswith("**Error:**") and "datasets/gone" in missing and "\n" not in missing
    assert queue.latest("recipe") is None or queue.latest("recipe").title != "recipe f"
    # Failing in the job: a row naming a picture outside the workspace.
    write_images(ws.root.parent / "elsewhere", [(64, 64)], ["x"])
    (ws.root / "datasets" / "bad").mkdir(parents=True)
    (ws.root / "datasets" / "bad" / "metadata.jsonl").write_text(
        f'{{"text": "x", "image": ["{ws.root.parent / "elsewhere" / "img00.png"}"]}}\n', encoding="utf-8")
    queued = data.on_run_recipe(RECIPE.format(out="f").replace("datasets/d", "datasets/bad"), "f", 0)
    assert queued.startswith("**Queued:**")
    job = queue.wait(queue.latest("recipe").id, 60)
    assert job.status == FAILED and "\n" not in job.error
    assert job.error.startswith("datasets/bad/metadata.jsonl line 1: image ") and job.error.endswith("is outside the workspace")
    status = data.poll_recipe({})[1]
    assert status.startswith("**Failed:**") and "is outside the workspace" in status
    assert not (ws.root / "curated" / "f" / "result.jsonl").exists()


SELECTING = RECIPE + "  - topk_specified_field_selector:\n      field_key: text\n      topk: 3\n"


def test_stop_during_a_dataset_level_pass(app, monkeypatch):
    """A selector runs as passes (rows, then its selection and the write): each shows its stage and
    count, and Stop pressed in the final write stops there, the previous result untouched."""
    data, queue, ws = app.lorastory_tabs["data"], app.lorastory.jobs, app.lorastory.ws
    folder = ws.root / "curated" / "top"
    recipe_run.run_recipe_text(ws, SELECTING.format(out="top"), "top")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(before["result.jsonl"].splitlines()) == 3
    seen: list[str] = []
    stop_at_row(monkeypatch, queue, 2, seen, stage="writing the result")
    data.on_run_recipe(SELECTING.format(out="top").replace("topk: 3", "topk: 4"), "top", 0)
    job = queue.wait(queue.latest("recipe").id, 60)
    assert job.status == CANCELLED, job.message
    assert [m.split(",")[0] for m in seen] == [
        *[f"topk_specified_field_selector: hashing {n}/6" for n in range(1, 7)],
        "topk_specified_field_selector: selecting 0/4", "topk_specified_field_selector: selecting 4/4",
        "writing the result 0/4", "writing the result 1/4"]
    assert job.message.startswith(
        "stopped at writing the result 2/4; curated/top/result.jsonl still holds the previous result")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert data.poll_recipe({})[1].startswith("**Cancelled:**")
