"""The whole job in a real headless Chromium on the embedded toy model (issue 22), asserting what the
page shows at each step: import a folder of toy-world pictures with ``.txt`` captions → the toy
recipe (the default) → export → train a few steps (the toy CPU preset, shortened) → preview a panel
and a LoRA-scale grid → a story with the LoRA → score it with the LoRA on and off → PNG Info.

Screenshots of every tab go to ``$LORASTORY_UI_SCREENSHOTS`` (``scripts/ui_screenshots.sh`` sets
it to ``docs/``: the README's and docs/webui.md's pictures come from this run).
"""

from __future__ import annotations

import json
import shutil

import pytest

from lorastory.toyworld.dataset import write_toy_dataset

pytestmark = pytest.mark.slow
LONG = 400_000  # ms: a step of the job on a busy 2-core machine


@pytest.fixture(scope="module")
def job_workspace(tmp_path_factory, toy_model_path):
    ws = tmp_path_factory.mktemp("job") / "workspace"
    (ws / "models").mkdir(parents=True)
    shutil.copytree(toy_model_path("kolors"), ws / "models" / "toy-kolors")
    shutil.copytree(toy_model_path("clip"), ws / "models" / "toy-clip")
    drawn = write_toy_dataset(ws / "incoming", count=12, style="outlined", lang="zh", seed=3)
    return ws, drawn


@pytest.fixture(scope="module")
def page(browser, job_workspace, serve):
    ws, _drawn = job_workspace
    with serve(ws) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Data").wait_for()
        yield page
        context.close()


CELLS = "#panels [data-testid^=cell-]"  # the panels table's cells, 4 a row


def panel_count(page) -> int:
    return page.locator(CELLS).count() // 4


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def fill_label(page, label: str, text: str) -> None:
    page.get_by_label(label, exact=True).first.fill(text)


def choose(page, elem_id: str, value: str) -> None:
    """Type a value into a dropdown that takes custom values, and confirm it."""
    box = page.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Enter")


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def text_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def wait_value(page, elem_id: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function(
        "([id, t]) => (document.querySelector(`#${id} textarea, #${id} input`)?.value || '').includes(t)",
        arg=[elem_id, text], timeout=timeout)


def shot(page, shots, name: str) -> None:
    page.screenshot(path=str(shots / name), full_page=True)


def test_whole_job_on_the_toy_model(page, job_workspace, shots, wait_text):
    ws, drawn = job_workspace
    # 1. import a folder with .txt captions: every caption comes from its file
    fill(page, "import-folder", "incoming")
    fill(page, "dataset-name", "toy")
    page.click("#import-folder-btn")
    wait_text(page, "import-status", "imported")
    total = len((ws / "datasets" / "toy" / "metadata.jsonl").read_text(encoding="utf-8").splitlines())
    assert f"imported {total} image(s)" in text_of(page, "import-status")
    assert f"captions: {total} from files, 0 from the fallback caption" in text_of(page, "import-status")

    # 2. the toy recipe is the default: run it on the dataset; the page names what each op dropped
    page.locator("#dataset-pick input").first.fill("datasets/toy/metadata.jsonl")
    page.locator("#dataset-pick input").first.press("Enter")
    page.get_by_role("button", name="Use this dataset in the recipe").click()
    wait_value(page, "recipe-yaml", "datasets/toy/metadata.jsonl")
    assert "image_text_similarity_filter" in value_of(page, "recipe-yaml")
    page.click("#run-recipe-btn")
    wait_text(page, "recipe-status", "kept", LONG)
    assert "nothing kept" not in text_of(page, "recipe-status")
    for op in ("image_shape_filter", "image_aspect_ratio_filter", "image_deduplicator"):
        wait_text(page, "op-table", op)
    page.locator("#kept-gallery img").first.wait_for()
    page.locator("#dropped-gallery img").first.wait_for()
    label = page.locator("#dropped-gallery .caption-label").first
    # dropped-gallery labels are not cut: the whole "op: reason" fits in its box
    assert label.evaluate("e => getComputedStyle(e).whiteSpace") == "normal"
    assert label.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    kept = len((ws / "curated" / "curated" / "result.jsonl").read_text(encoding="utf-8").splitlines())
    assert 0 < kept < total
    shot(page, shots, "ui-data.png")
    fill(page, "recipe-name", "curated")
    page.locator("#export-src input").first.fill("curated/curated/result.jsonl")
    page.locator("#export-src input").first.press("Enter")
    page.click("#export-btn")
    wait_text(page, "export-status", f"{kept} image(s) in")

    # 3. train a few steps: the toy CPU preset is the default, shortened; samples labelled, loss raw + smoothed
    page.get_by_role("tab", name="Train").click()
    assert "toy model on a CPU" in value_of(page, "preset")
    choose(page, "train-data", "train/my-style")
    fill(page, "run-name", "toy-style")
    fill_label(page, "max steps (0: epochs decide)", "6")
    fill_label(page, "samples every (steps, 0: off)", "3")
    page.click("#train-btn")
    wait_text(page, "train-status", "train toy-style: done", LONG)
    assert (ws / "runs" / "toy-style" / "lora.safetensors").is_file()
    page.locator("#train-samples img").first.wait_for()
    wait_text(page, "train-samples", "step 6: 一个红色长发")
    wait_text(page, "loss-plot", "smoothed (0.9)")  # the legend: the raw loss and its moving average
    shot(page, shots, "ui-train.png")

    # 4. the toy story is the default; two panels, fewer steps, with the LoRA
    page.get_by_role("tab", name="Story").click()
    assert value_of(page, "story-title") == "红发女孩的一天"
    assert panel_count(page) == 8
    for left in range(7, 1, -1):
        page.get_by_role("button", name="Remove last panel").click()
        page.wait_for_function(f"() => document.querySelectorAll('{CELLS}').length === {left * 4}")
    fill(page, "story-steps", "8")
    choose(page, "story-lora", "runs/toy-style/lora.safetensors")
    page.click("#preview-btn")
    wait_text(page, "preview-status", "done", LONG)
    page.locator("#preview-image img").wait_for()
    fill(page, "grid-scales", "0, 1")
    fill(page, "grid-seeds", "1, 2")
    page.click("#grid-btn")
    wait_text(page, "preview-status", "X/Y grid of panel 1: done", LONG)
    page.locator("#xy-grid img").wait_for()
    page.click("#generate-btn")
    wait_text(page, "story-status", "story my-story: done", LONG)
    page.locator("#storyboard img").wait_for()
    manifest = json.loads((ws / "stories" / "my-story" / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["panels"]) == 2 and manifest["lora"]["path"].endswith("lora.safetensors")
    shot(page, shots, "ui-story.png")

    # 5. score with the LoRA on and off: both rows and the deltas are shown
    page.get_by_role("tab", name="Gallery / Eval").click()
    page.get_by_role("button", name="Refresh lists").click()
    page.locator("#gallery-run input").first.click()
    page.get_by_role("option", name="stories/my-story").click()
    wait_text(page, "gallery-params", "红色长发")  # the panels' prompts, read back from the PNGs
    page.locator("#eval-compare input").check()
    page.click("#eval-btn")
    wait_text(page, "eval-status", "done", LONG)
    wait_text(page, "on-off-headline", "LoRA on minus off")
    page.locator("#on-off-image img").wait_for()
    compare = json.loads((ws / "stories" / "my-story" / "compare" / "compare.json").read_text(encoding="utf-8"))
    style = compare["summary"]["style_score_mean"]
    wait_text(page, "on-off-table", f"{style['delta']:+.2f}")
    assert "style score" in text_of(page, "on-off-table")
    shot(page, shots, "ui-gallery.png")

    # 6. PNG Info: a panel's parameters, sent to the Story tab
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-file input[type=file]").set_input_files(str(ws / "stories" / "my-story" / "panel-02.png"))
    wait_value(page, "pnginfo-text", "Steps: 8")
    assert manifest["panels"][1]["prompt"] in value_of(page, "pnginfo-text")
    shot(page, shots, "ui-pnginfo.png")
    page.click("#pnginfo-send-btn")
    wait_text(page, "pnginfo-status", "sent to the Story tab")
    page.get_by_role("tab", name="Story").click()
    wait_text(page, "panels", manifest["panels"][1]["prompt"][:12])
    assert panel_count(page) == 1
