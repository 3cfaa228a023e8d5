"""Re-rendering one panel of a story run with a new seed, the other panels kept byte for byte."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, DataError
from lorastory.fileio import (
    atomic_files,
    atomic_write_text,
    check_outputs_apart,
    clean_stale_temps,
    display_path,
    finish_commit,
)
from lorastory.generate.checks import check_lora_scale, check_seed
from lorastory.generate.consistency_settings import REFERENCE_FILE
from lorastory.generate.grid import save_storyboard
from lorastory.generate.manifest import RunManifest
from lorastory.generate.pngmeta import PNG_COMPRESS_LEVEL
from lorastory.generate.rundir import (
    MANIFEST_FILE,
    STORY_FILE,
    STORYBOARD_FILE,
    read_manifest,
    remove_staging,
    write_json,
)
from lorastory.generate.story import StepCallback, generate_story
from lorastory.generate.story_file import Story, load_story, with_consistency


def _check_run(folder: Path, index: int) -> tuple[Story, RunManifest]:
    """The run's story and manifest, checked to match, with panel ``index`` in range and every panel file present."""
    if not folder.is_dir():
        raise ConfigError(f"{display_path(folder)}: no such run folder; pass a folder 'lorastory generate' wrote")
    finish_commit(folder / MANIFEST_FILE)  # an earlier regenerate killed while swapping its files in
    clean_stale_temps(folder)
    manifest_path = folder / MANIFEST_FILE
    manifest = read_manifest(manifest_path)
    story = load_story(folder / STORY_FILE)
    where = display_path(manifest_path)
    if len(manifest.panels) != len(story.panels):
        raise DataError(f"{where} lists {len(manifest.panels)} panels but {STORY_FILE} has {len(story.panels)}; "
                        "the run folder was changed by hand: generate the story again")
    if not 1 <= index <= len(story.panels):
        raise ConfigError(f"panel {index}: the story has panels 1 to {len(story.panels)}")
    for number, record in enumerate(manifest.panels, start=1):
        path = folder / record.file
        if not path.is_file():
            raise DataError(f"{display_path(path)}: panel {number} listed in {MANIFEST_FILE} is missing or not a file; "
                            "generate the story again")
    return story, manifest


def regenerate_panel(
    run_dir: str | Path,
    index: int,
    seed: int,
    model: str | None = None,
    lora: str | None = None,
    on_step: StepCallback | None = None,
    before_swap: Callable[[], None] | None = None,
    pipe: Any = None,
) -> Path:
    """Re-render panel ``index`` (1-based) of a run with a new ``seed``; the others stay byte for byte.

    The run folder is checked first (manifest, story.yaml and panel files agree). The panel is
    rendered as a one-panel story into a staging folder with the run's model, LoRA and settings
    (``model``/``lora`` override the manifest's paths); then the panel, storyboard, manifest and
    story.yaml are swapped in together (:func:`lorastory.fileio.atomic_files`: all or nothing).
    ``before_swap`` may raise to cancel with nothing changed.

    With shared attention on, a panel depends on its batch-mates, so the whole story is
    rendered again (with the new seed for this panel) and only this panel is kept. A
    reference-conditioned run reuses its ``reference.png``.
    """
    folder = Path(run_dir)
    seed = check_seed(seed, "--seed")
    story, manifest = _check_run(folder, index)
    recorded_lora = manifest.lora
    lora = lora or (recorded_lora.path if recorded_lora else None)
    scale = check_lora_scale(recorded_lora.scale if recorded_lora else 1.0, f"{MANIFEST_FILE} lora scale")
    model = model or manifest.model
    if not model:
        raise DataError(f"{display_path(folder / MANIFEST_FILE)}: no model recorded; pass --model")
    panel = story.panels[index - 1].model_copy(update={"seed": seed})
    panels = list(story.panels)
    panels[index - 1] = panel
    updated = story.model_copy(update={"panels": panels})
    panel_name = f"panel-{index:02d}.png"
    storyboard_name = manifest.storyboard or STORYBOARD_FILE
    targets = [MANIFEST_FILE, panel_name, storyboard_name, STORY_FILE]
    inputs = [(label, path) for label, path in (("--lora", lora), ("--model", model)) if path and os.path.lexists(path)]
    check_outputs_apart([(name, folder / name) for name in targets], inputs)
    whole = story.consistency.uses_attention
    render = updated.model_copy(update={"title": ""}) if whole else story.model_copy(update={"panels": [panel], "title": ""})
    if render.consistency.uses_reference and (folder / REFERENCE_FILE).is_file():
        render = with_consistency(render, reference_image=str(folder / REFERENCE_FILE), reference_prompt=None)
    work = Path(tempfile.mkdtemp(prefix=f".lorastory-regenerate.{os.getpid()}.", suffix=".tmp", dir=folder))
    try:
        generate_story(render, model, work / "render", lora=lora, lora_scale=scale, on_step=on_step, pipe=pipe)
        record = read_manifest(work / "render" / MANIFEST_FILE).panels[index - 1 if whole else 0]
        staged_panel = work / "render" / record.file
        records = list(manifest.panels)
        records[index - 1] = record.model_copy(update={"file": panel_name})
        updated_manifest = manifest.model_copy(update={"panels": records})
        captions = [p.caption for p in records]
        sources = [staged_panel if number == index else folder / p.file for number, p in enumerate(records, start=1)]
        save_storyboard(sources, work / storyboard_name, cols=2, title=updated.title or None,
                        captions=captions if any(captions) else None, compress_level=PNG_COMPRESS_LEVEL)
        write_json(work / MANIFEST_FILE, updated_manifest)
        atomic_write_text(work / STORY_FILE, updated.to_yaml())
        if before_swap is not None:
            before_swap()
        staged = {MANIFEST_FILE: work / MANIFEST_FILE, panel_name: staged_panel,
                  storyboard_name: work / storyboard_name, STORY_FILE: work / STORY_FILE}
        with atomic_files([folder / name for name in targets]) as temps:
            for name, temp in zip(targets, temps):
                os.replace(staged[name], temp)
    finally:
        remove_staging(work)
    return folder / panel_name
