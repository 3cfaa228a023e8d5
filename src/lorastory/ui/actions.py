"""What the web app's buttons do: library calls, with every path checked against the workspace.

No pipeline logic lives here: importing is :func:`lorastory.data.dataset.import_dataset`,
curating is :func:`lorastory.data.executor.run_recipe`, training is
:func:`lorastory.train.trainer.train`, stories are
:func:`lorastory.generate.story.generate_story`, scoring is
:func:`lorastory.eval.report.evaluate_run`. This module adds only what a
shared web server needs on top: path checks, staging folders that appear
atomically, and progress hooks that let a job be cancelled between steps.
Gradio is not imported here, so all of it is testable without a browser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lorastory.errors import ConfigError, DataError, LorastoryError
from lorastory.fileio import atomic_open, atomic_write_text, parse_json, replace_dir
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import PathRefused, Workspace

DEFAULT_MODEL = "models/toy-kolors"
DEFAULT_CLIP = "models/toy-clip"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


# --------------------------------------------------------------------------- models


def ensure_default_model(ws: Workspace, say: Callable[[str], None] = print) -> Path:
    """The workspace's default model: the embedded toy Kolors (and toy CLIP for scoring), written
    there when missing."""
    from lorastory.models.toy import write_toy_model

    target = ws.resolve(DEFAULT_MODEL)
    for folder, component in ((target, "kolors"), (ws.resolve(DEFAULT_CLIP), "clip")):
        if not any(folder.glob("*.json")):
            say(f"writing the embedded toy {component} model to {folder} (the default until you add a real one)...")
            write_toy_model(folder, component)
    return target


def model_choices(ws: Workspace) -> list[str]:
    """Diffusion models in ``models/``: diffusers folders and single .safetensors files."""
    found = [p for p in ws.list("models", "*", dirs=True) if (ws.root / p / "model_index.json").is_file()]
    found += ws.list("models", "*.safetensors")
    return found


def clip_choices(ws: Workspace) -> list[str]:
    """CLIP / Chinese-CLIP folders in ``models/`` (what evaluation scores with)."""
    found = []
    for rel in ws.list("models", "*", dirs=True):
        config = ws.root / rel / "config.json"
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        except (OSError, ValueError):
            continue
        if "clip" in str(kind):
            found.append(rel)
    return found


def resolve_model(ws: Workspace, value: str | None) -> str:
    """A model choice as the library wants it: a workspace path, or a hub id (never another local path)."""
    value = (value or "").strip() or DEFAULT_MODEL
    try:
        return str(ws.resolve(value, must_exist=True))
    except PathRefused:
        if _HUB_ID.match(value) and not os.path.exists(value) and not value.startswith((".", "/", "~")):
            return value
        raise


def lora_choices(ws: Workspace) -> list[str]:
    """LoRA files: trained runs' ``lora*.safetensors`` and any in ``models/``."""
    return ws.list("runs", "*/lora*.safetensors") + ws.list("models", "*lora*.safetensors")


def ip_adapter_choices(ws: Workspace) -> list[str]:
    """IP-Adapter folders in ``models/``: those with a CLIP image encoder where the published layouts keep it."""
    from lorastory.models.ip_adapter import DEFAULT_IP_ADAPTERS

    encoders = sorted({spec.image_encoder for spec in DEFAULT_IP_ADAPTERS.values()})
    return [p for p in ws.list("models", "*", dirs=True) if any((ws.root / p / e).is_dir() for e in encoders)]


# --------------------------------------------------------------------------- data


def import_folder(ws: Workspace, folder: str, name: str, caption: str | None, replace: bool) -> dict[str, Any]:
    """Import a folder inside the workspace into ``datasets/NAME`` (Data-Juicer format)."""
    from lorastory.data.dataset import ImportConfig, import_dataset
    from lorastory.data.sources import open_source

    source = ws.resolve(folder, must_exist=True)
    out = ws.child("datasets", name)
    links = ws.escaping_links(source) if source.is_dir() else []
    if links:
        raise PathRefused(f"{ws.rel(source)} has links that leave the workspace: {', '.join(links[:5])}")
    # Metadata files can name images anywhere: check every item's path before anything is copied.
    for item in open_source(str(source), "folder"):
        if item.path is not None and not item.problem:
            resolved = item.path if os.path.isabs(item.path) else os.path.join(source, item.path)
            if not ws.is_inside(resolved):
                raise PathRefused(f"{item.origin}: image {item.path} is outside the workspace")
    config = ImportConfig(source=str(source), kind="folder", caption=(caption or None))
    result = import_dataset(config, out, overwrite=replace)
    return {"dataset": ws.rel(out), "written": result.written, "skipped": result.skipped}


def import_upload(ws: Workspace, files: list[str], upload_root: str, name: str, caption: str | None, replace: bool) -> dict[str, Any]:
    """Check uploaded images/zips into ``uploads/NAME-TIME``, then import that folder."""
    if not files:
        raise ConfigError("no files uploaded; add images, .txt captions or a .zip")
    ws.child("datasets", name)  # check the name before storing anything
    folder = ws.child("uploads", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    stored = ws.store_upload(files, upload_root, folder)
    if not stored.images:
        shutil.rmtree(folder, ignore_errors=True)
        reasons = "; ".join(f"{r['file']}: {r['reason']}" for r in stored.refused[:5])
        raise ConfigError(f"no usable image in the upload ({reasons or 'nothing uploaded'})")
    result = import_folder(ws, ws.rel(folder), name, caption, replace)
    result["upload"] = ws.rel(folder)
    result["refused"] = stored.refused
    return result


def dataset_choices(ws: Workspace) -> list[str]:
    return ws.list("datasets", "*/metadata.jsonl")


def curated_choices(ws: Workspace) -> list[str]:
    return [p for p in ws.list("curated", "**/*.jsonl") if not p.endswith("_stats.jsonl")]


def train_folder_choices(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("train", "*/metadata.csv")]


def default_recipe(dataset: str | None, name: str = "curated") -> str:
    """The reference recipe (shipped example) pointed at a workspace dataset."""
    from lorastory.demo import EXAMPLES

    text = (EXAMPLES / "recipe_reference.yaml").read_text(encoding="utf-8")
    return point_recipe(text, dataset or "datasets/NAME/metadata.jsonl", f"curated/{name}/result.jsonl")


def point_recipe(text: str, dataset: str, export: str) -> str:
    """Set ``dataset_path`` and ``export_path`` in recipe text, keeping the rest (and comments) as written."""
    for key, value in (("dataset_path", dataset), ("export_path", export)):
        line = f"{key}: {json.dumps(value, ensure_ascii=False)}"
        text, count = re.subn(rf"(?m)^{key}:.*$", lambda _m, line=line: line, text)
        if not count:
            text = line + "\n" + text
    return text


def op_defaults(name: str) -> dict[str, Any]:
    """An op's own parameters with their defaults (what Data-Juicer names them)."""
    from lorastory.data.ops import OpParams, registered_ops

    params = registered_ops()[name].Params
    base = set(OpParams.model_fields)
    return {k: f.default for k, f in params.model_fields.items() if k not in base}


def op_rows(name: str) -> list[list[str]]:
    """Parameter name, type and default of an op, for the reference table."""
    from lorastory.data.ops import OpParams, registered_ops

    params = registered_ops()[name].Params
    rows = []
    for key, spec in params.model_fields.items():
        if key in OpParams.model_fields:
            continue
        kind = getattr(spec.annotation, "__name__", None) or str(spec.annotation).replace("typing.", "")
        rows.append([key, kind, json.dumps(spec.default, ensure_ascii=False, default=str)])
    return rows


def add_op(text: str, name: str, params_yaml: str) -> str:
    """Append ``- name: params`` to the recipe's ``process`` list (validated first)."""
    from lorastory.config import yaml_from_text
    from lorastory.data.ops import build_op

    params = yaml_from_text(params_yaml or "{}", f"{name} parameters") or {}
    build_op(name, params, where=f"new {name}")  # a bad field is refused here, naming it
    data = yaml_from_text(text or "{}", "recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError("the recipe must be a mapping of global keys and 'process'")
    data.setdefault("process", [])
    data["process"] = (data["process"] or []) + [{name: params}]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def run_recipe_text(
    ws: Workspace, text: str, name: str, processes: int = 1, on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Save the editor's recipe as ``recipes/NAME.yaml`` and run it; paths in it are workspace paths."""
    from lorastory.data.dataset import read_rows
    from lorastory.data.executor import run_recipe
    from lorastory.data.recipe import load_recipe, resolve_dataset_file
    from lorastory.data.report import summary
    from lorastory.data.sample import resolve_path

    path = ws.child("recipes", f"{name}.yaml")
    atomic_write_text(path, text)
    recipe = load_recipe(path)
    recipe.dataset_path = str(ws.resolve(recipe.dataset_path, must_exist=True))
    recipe.export_path = str(ws.resolve(recipe.export_path))
    input_file = ws.check(resolve_dataset_file(recipe))
    image_keys = {recipe.image_key, "image", "images"} | {op.params.image_key for op in recipe.build_ops() if op.params.image_key}
    total = 0
    for number, row, _problem in read_rows(input_file):
        total += 1
        # Any key an op could read images from (ops may set their own image_key).
        for key in image_keys:
            images = (row or {}).get(key) or []
            for image in [images] if isinstance(images, str) else images if isinstance(images, list) else []:
                if isinstance(image, str) and not ws.is_inside(resolve_path(image, str(input_file.parent))):
                    raise PathRefused(f"{ws.rel(input_file)} line {number}: image {image} is outside the workspace")
    result = run_recipe(recipe, processes=max(1, int(processes or 1)),
                        on_progress=(lambda done: on_progress(done, total)) if on_progress else None)
    data = summary(result)  # the reports were written with the result (trust_remote_code was refused by load_recipe)
    data["report_html"] = str(result.report_html)
    data["report_json"] = str(result.report_json)
    return data


def kept_samples(ws: Workspace, export: str, limit: int = 48) -> list[tuple[str, str]]:
    """(image, caption) of the first kept rows of a recipe result, images inside the workspace only."""
    from lorastory.data.dataset import read_rows

    found = []
    for _number, row, _problem in read_rows(ws.check(export)):
        if row is None:
            continue
        images = row.get("image") or row.get("images") or []
        for image in [images] if isinstance(images, str) else images:
            if isinstance(image, str) and os.path.isfile(image) and ws.is_inside(image):
                found.append((image, str(row.get("text", ""))[:80]))
        if len(found) >= limit:
            break
    return found


def dropped_samples(ws: Workspace, report: dict[str, Any]) -> list[tuple[str, str]]:
    """(image, "op: why") for the report's dropped examples, images inside the workspace only."""
    found = []
    for example in report.get("dropped_examples", []):
        for image in example.get("images", []):
            if os.path.isfile(image) and ws.is_inside(image):
                found.append((image, f"{example['op']}: {example['why']} (line {example['line']})"))
    return found


def export_for_training(ws: Workspace, result_jsonl: str, name: str, replace: bool) -> dict[str, Any]:
    """``export-csv``: a curated result → ``train/NAME`` (metadata.csv + images)."""
    from lorastory.data.dataset import export_csv
    from lorastory.data.sample import resolve_path

    source = ws.resolve(result_jsonl, must_exist=True)
    for image, _caption in _all_images(source, resolve_path):
        if not ws.is_inside(image):
            raise PathRefused(f"{ws.rel(source)}: image {image} is outside the workspace")
    out = ws.child("train", name)
    result = export_csv(source, out, overwrite=replace)
    return {"train_folder": ws.rel(out), "written": result.written, "skipped": result.skipped}


def _all_images(jsonl: Path, resolve_path: Callable[[str, str], str]) -> list[tuple[str, str]]:
    from lorastory.data.dataset import read_rows

    found = []
    for _number, row, _problem in read_rows(jsonl):
        images = (row or {}).get("image") or (row or {}).get("images") or []
        for image in [images] if isinstance(images, str) else images:
            if isinstance(image, str):
                found.append((resolve_path(image, str(jsonl.parent)), ""))
    return found


# --------------------------------------------------------------------------- training


def train_config(ws: Workspace, model: str, data: str, name: str, form: dict[str, Any]) -> Any:
    """A validated :class:`TrainConfig` from the form; ``model``/``data`` are workspace paths."""
    from lorastory.train.config import TrainConfig

    values = dict(form)
    prompts = [p.strip() for p in str(values.pop("validation_prompts", "") or "").splitlines() if p.strip()]
    values["max_steps"] = int(values.get("max_steps") or 0) or None
    for key in ("rank", "resolution", "epochs", "batch_size", "gradient_accumulation", "checkpoint_every",
                "validation_every", "seed"):
        if values.get(key) is not None:
            values[key] = int(values[key])
    data_dir = ws.resolve(data, must_exist=True)
    if not (data_dir / "metadata.csv").is_file():
        raise ConfigError(f"{data}: not a training folder (no metadata.csv); export one from the Data tab")
    return TrainConfig.from_dict(
        {**values, "model": resolve_model(ws, model), "data": str(data_dir), "out": str(ws.child("runs", name)),
         "validation_prompts": prompts},
        source="training form",
    )


def train_job(ws: Workspace, config: Any) -> Callable[[JobContext], Any]:
    """The background job for one training run; progress, losses and log lines go to the job."""
    from lorastory.train.trainer import train

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.data.update(out=config.out, steps=[], losses=[])

        def on_progress(p: Any) -> None:
            ctx.data["steps"].append(p.step)
            ctx.data["losses"].append(p.loss)
            ctx.progress(p.step / max(p.total_steps, 1),
                         f"step {p.step}/{p.total_steps}, loss {p.loss:.4f}, {p.images_per_second:.2f} img/s")

        ctx.progress(0.0, "loading the model and filling the caches")
        result = train(config, on_progress=on_progress, say=ctx.log)
        return {"lora": [ws.rel(p) for p in result.lora_files], "steps": result.steps}

    return run


def run_samples(ws: Workspace, out: str | None) -> list[str]:
    """Validation samples of a training run, newest last."""
    if not out:
        return []
    folder = ws.check(out) / "samples"
    return [str(p) for p in sorted(folder.glob("*.png")) if ws.is_inside(p)] if folder.is_dir() else []


# --------------------------------------------------------------------------- stories

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


def story_from_form(title: str, character: str, style: str, negative: str, rows: list[list[Any]],
                    defaults: dict[str, Any], consistency: dict[str, Any] | None = None) -> Any:
    """A validated :class:`Story` from the Story tab (table rows: prompt, caption, seed, negative).

    ``consistency`` is what :func:`consistency_from_form` returns (default: none).
    """
    from lorastory.generate.story import Story

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


def story_job(ws: Workspace, story: Any, model: str, lora: str | None, scale: float, name: str) -> Callable[[JobContext], Any]:
    """Render a story into ``stories/NAME``; the folder appears only when every file is written."""
    from lorastory.generate.story import generate_story

    final = ws.child("stories", name)
    model_path = resolve_model(ws, model)
    lora_path = str(ws.resolve(lora, must_exist=True)) if lora else None
    panels = len(story.panels)

    def run(ctx: JobContext) -> dict[str, Any]:
        staging = final.with_name(f".{final.name}.part-{ctx.job.id}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            ctx.progress(0.0, "loading the model")
            generate_story(story, model_path, staging, lora=lora_path, lora_scale=scale,
                           on_step=lambda done, total: ctx.progress(done / total, _panel_message(done, total, panels)))
            replace_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.data["run"] = str(final)
        return {"run": ws.rel(final)}

    return run


def _panel_message(done: int, total: int, panels: int) -> str:
    per_panel = max(total // max(panels, 1), 1)
    panel = min(done // per_panel + (1 if done % per_panel else 0), panels) or 1
    return f"panel {panel}/{panels}, step {done}/{total}"


def regenerate_job(ws: Workspace, run: str, index: int, seed: int) -> Callable[[JobContext], Any]:
    """Re-render panel ``index`` (1-based) of a story run with ``seed``; the others stay as they are.

    The panel is rendered by :func:`generate_story` as a one-panel story with the run's
    model, LoRA and settings, then swapped in; the storyboard, manifest and story.yaml
    are rewritten to match.
    """
    from lorastory.generate.rundir import read_manifest
    from lorastory.generate.story import regenerate_panel

    folder = ws.resolve(run, must_exist=True)
    manifest = read_manifest(folder / "manifest.json")  # a one-line error for a damaged or foreign manifest
    if not manifest.get("model"):
        raise DataError(f"{folder / 'manifest.json'}: no model recorded; render the story again")
    model = resolve_model(ws, manifest["model"])
    lora = manifest.get("lora") or None
    lora_path = str(ws.resolve(lora["path"], must_exist=True)) if lora else None

    def run_job(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, f"loading the model for panel {index}")
        regenerate_panel(folder, index, int(seed), model=model, lora=lora_path, before_swap=ctx.check,
                         on_step=lambda done, total: ctx.progress(done / total, f"panel {index}, step {done}/{total}"))
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


def story_runs(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("stories", "*/manifest.json")]


def train_runs(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("runs", "*/config.yaml")]


# --------------------------------------------------------------------------- gallery / eval


def run_details(ws: Workspace, run: str) -> dict[str, Any]:
    """A story run as the gallery shows it: panels with the parameters read back from each PNG."""
    from lorastory.generate.pngmeta import read_parameters
    from lorastory.generate.rundir import read_manifest

    folder = ws.resolve(run, must_exist=True)
    manifest_path = folder / "manifest.json"
    manifest = _json_or_none(manifest_path, read_manifest) or {}
    rows, panels = [], []
    for path in sorted(folder.glob("panel-*.png")):
        if not ws.is_inside(path):
            continue
        params = read_parameters(path)
        panels.append(str(path))
        if params is None:
            rows.append([path.name, "", "", "", "", "", "", "", ""])
            continue
        lora = f"{params.lora_name}:{params.lora_scale:g}" if params.lora_name and params.lora_scale is not None else ""
        rows.append([path.name, params.prompt, params.negative_prompt, params.seed, params.steps, params.cfg_scale,
                     params.sampler, f"{params.width}x{params.height}", lora])
    scores_path = folder / "scores.json"
    scores = _json_or_none(scores_path, lambda path: parse_json(path.read_bytes(), str(path)))
    board = folder / manifest.get("storyboard", "storyboard.png")
    return {"folder": folder, "manifest": manifest, "rows": rows, "panels": panels, "scores": scores,
            "storyboard": str(board) if board.is_file() and ws.is_inside(board) else None}


def _json_or_none(path: Path, read: Callable[[Path], Any]) -> Any:
    """What ``read`` makes of a JSON file, or None when it is missing or damaged (the gallery shows what it can)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except (LorastoryError, OSError):
        return None


PARAM_COLUMNS = ["file", "prompt", "negative", "seed", "steps", "cfg", "sampler", "size", "lora"]


def eval_job(ws: Workspace, run: str, clip_model: str, compare: bool) -> Callable[[JobContext], Any]:
    """Score a story run (``scores.json``) with a CLIP model from the workspace; optionally LoRA on/off."""
    from lorastory.eval.report import evaluate_run

    folder = ws.resolve(run, must_exist=True)
    clip = str(ws.resolve(clip_model, must_exist=True)) if clip_model else ""
    if not clip:
        raise ConfigError("choose a CLIP model folder from models/ (no hub is reachable from the app)")

    def run_job(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, "loading CLIP and scoring")
        scores = evaluate_run(folder, clip_model=clip, compare=compare, annotate=True,
                              on_step=lambda done, total: ctx.progress(done / max(total, 1), f"step {done}/{total}"))
        ctx.data["run"] = str(folder)
        return {"summary": scores.get("summary")}

    return run_job
