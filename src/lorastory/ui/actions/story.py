"""The Story tab's actions: a validated Story from the form, render it, re-render one panel, zip a run;
run folders appear only when every file is written."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, DataError, LorastoryError
from lorastory.fileio import atomic_open, replace_dir
from lorastory.generate.guidance import check_true_cfg
from lorastory.generate.regenerate import regenerate_panel
from lorastory.generate.rundir import read_manifest
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story
from lorastory.hub import hub_reachable
from lorastory.models.ip_adapter import DEFAULT_IP_ADAPTERS
from lorastory.ui.actions.families import model_family
from lorastory.ui.actions.models import check_hub_id, check_machine, in_hub_cache, resolve_model
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import Workspace
from lorastory.eval.sweep import recommended_scale as swept

STORY_COLUMNS = ["prompt", "caption", "seed", "negative"]


def consistency_from_form(ws: Workspace, mode: str | None, strength: float | None, reference_image: str | None,
                          ip_adapter: str | None) -> dict[str, Any]:
    """The story's ``consistency`` settings from the Story tab; paths are checked against the workspace.

    The reference image is a workspace path (empty: one is generated); the IP-Adapter a folder
    in the workspace or a hub id (empty: the family's published one).
    """
    settings: dict[str, Any] = {"mode": mode or "none"}
    if strength is not None:
        settings["strength"] = float(strength)
    if settings["mode"] in ("reference", "both"):
        if reference_image and reference_image.strip():
            settings["reference_image"] = str(ws.resolve(reference_image.strip(), must_exist=True))
        if ip_adapter and ip_adapter.strip():
            settings["ip_adapter"] = resolve_model(ws, ip_adapter)
    return settings


def check_default_ip_adapter() -> None:
    """Reference mode with the model's published IP-Adapter needs it downloaded or a network, checked before queueing."""
    if hub_reachable() or any(in_hub_cache(spec.source) for spec in DEFAULT_IP_ADAPTERS.values()):
        return
    raise ConfigError("reference mode needs an IP-Adapter and the published one is not downloaded (no network here); "
                      "put one in models/ and choose it, or use the attention mode")


def story_from_form(title: str, character: str, style: str, negative: str, rows: list[list[Any]],
                    defaults: dict[str, Any], consistency: dict[str, Any] | None = None, separator: str | None = None) -> Any:
    """A validated :class:`Story` from the Story tab (table rows: prompt, caption, seed, negative).

    ``consistency`` is what :func:`consistency_from_form` returns (default: none); ``separator``
    joins character, prompt and style (empty: the story default).
    """
    panels = []
    for row in rows:
        cells = (list(row) + [None] * 4)[:4]
        prompt, caption, seed, neg = (None if _blank(c) else c for c in cells)
        if prompt is None:
            continue
        panel: dict[str, Any] = {"prompt": str(prompt)}
        if caption is not None:
            panel["caption"] = str(caption)
        if seed is not None:
            try:
                panel["seed"] = int(float(seed))
            except ValueError:
                raise ConfigError(f"panel {len(panels) + 1}: seed '{seed}' is not a whole number") from None
        if neg is not None:
            panel["negative"] = str(neg)
        panels.append(panel)
    data = {"title": title or "", "character": character or "", "style": style or "", "negative": negative or "",
            "defaults": {k: v for k, v in defaults.items() if not _blank(v)}, "consistency": consistency or {},
            "panels": panels}
    if separator:
        data["separator"] = separator
    for key in ("steps", "width", "height", "seed"):
        if key in data["defaults"]:
            data["defaults"][key] = int(data["defaults"][key])
    return Story.from_dict(data, source="story form")


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from an empty table cell
        return True
    return isinstance(value, str) and not value.strip()


def story_rows(story: Any) -> list[list[Any]]:
    return [[p.prompt, p.caption or "", "" if p.seed is None else p.seed, p.negative or ""] for p in story.panels]


def story_form_values(story: Any) -> tuple[Any, ...]:
    """A story's values for the Story tab's form (``StoryTab.story_inputs``, in its order): what loading one fills."""
    d, c = story.defaults, story.consistency
    return (story.title, story.character, story.style, story.negative, d.steps, d.cfg, d.width, d.height, d.seed,
            d.sampler, story_rows(story), c.mode, c.strength, c.reference_image or "", c.ip_adapter or "",
            story.separator, d.true_cfg)


def free_run_name(ws: Workspace, area: str, name: str, busy: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when ``AREA/name`` exists or a queued job writes it (``busy``)."""
    candidate, number = name, 1
    while ws.child(area, candidate).exists() or f"{area}/{candidate}" in busy:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def story_job(ws: Workspace, story: Any, model: str, lora: str | None, scale: float, name: str,
              base_dtype: str = "default", offload: bool = False) -> Callable[[JobContext], Any]:
    """Render a story into ``stories/NAME``; the folder appears only when every file is written.

    ``base_dtype`` and ``offload`` are ``lorastory generate``'s ``--base-dtype`` and ``--offload``. Refused now,
    before the job is queued, in the library's one line: a hub id (model, IP-Adapter) that cannot be had here, a
    base dtype or offload this machine cannot run, and true CFG for a model whose cfg is already CFG.
    """
    final = ws.child("stories", name)
    model_path = resolve_model(ws, model)
    check_hub_id(model_path, "model")
    check_machine(base_dtype, offload)
    family = model_family(ws, model)
    if family is not None:
        check_true_cfg(story.defaults.true_cfg, family)
    if story.consistency.uses_reference:
        if story.consistency.ip_adapter:
            check_hub_id(str(story.consistency.ip_adapter), "IP-Adapter")
        else:
            check_default_ip_adapter()
    lora_path = str(ws.resolve(lora, must_exist=True)) if lora else None
    panels = len(story.panels)

    def run(ctx: JobContext) -> dict[str, Any]:
        staging = final.with_name(f".{final.name}.part-{ctx.job.id}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            ctx.progress(0.0, "loading the model")
            generate_story(story, model_path, staging, lora=lora_path, lora_scale=scale, base_dtype=base_dtype,
                           offload=offload,
                           on_step=lambda done, total: ctx.stage("rendering: step", done, total,
                                                                 _panel_message(done, total, panels)))
            replace_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.data["run"] = str(final)
        return {"run": ws.rel(final)}

    return run


def _panel_message(done: int, total: int, panels: int) -> str:
    per_panel = max(total // max(panels, 1), 1)
    panel = min(done // per_panel + (1 if done % per_panel else 0), panels) or 1
    return f"panel {panel}/{panels}"


def regenerate_job(ws: Workspace, run: str, index: int, seed: int) -> Callable[[JobContext], Any]:
    """Re-render panel ``index`` (1-based) of a story run with ``seed``; the others stay as they are.

    The panel is rendered by :func:`generate_story` as a one-panel story with the run's
    model, LoRA and settings, then swapped in; the storyboard, manifest and story.yaml
    are rewritten to match.
    """
    folder = ws.resolve(run, must_exist=True)
    manifest = read_manifest(folder / "manifest.json")  # a one-line error for a damaged or foreign manifest
    if not manifest.model:
        raise DataError(f"{folder / 'manifest.json'}: no model recorded; render the story again")
    model = resolve_model(ws, manifest.model)
    lora_path = str(ws.resolve(manifest.lora.path, must_exist=True)) if manifest.lora else None

    def run_job(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, f"loading the model for panel {index}")
        regenerate_panel(folder, index, int(seed), model=model, lora=lora_path, before_swap=ctx.check,
                         on_step=lambda done, total: ctx.stage(f"panel {index}: step", done, total))
        ctx.data["run"] = str(folder)
        return {"run": ws.rel(folder), "panel": index, "seed": int(seed)}

    return run_job


def story_zip(ws: Workspace, run: str) -> Path:
    """``downloads/NAME.zip``: the run's panels, storyboard, manifest and story.yaml."""
    folder = ws.resolve(run, must_exist=True)
    if not (folder / "manifest.json").is_file():
        raise ConfigError(f"{run}: not a story run (no manifest.json)")
    target = ws.child("downloads", f"{folder.name}.zip")
    with atomic_open(target, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and ws.is_inside(path):
                archive.write(path, f"{folder.name}/{path.name}")
    return target


def recommended_scale(ws: Workspace, lora: str | None) -> float | None:
    """The scale ``lorastory eval sweep`` recommended for this LoRA file (its sweep.json), else ``None``."""

    if not lora or not str(lora).strip():
        return None
    try:
        path = ws.resolve(str(lora).strip(), must_exist=True)
    except LorastoryError:
        return None
    return swept(path) if path.is_file() else None
