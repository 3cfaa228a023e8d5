"""Reading a generated run folder as evaluation sees it: its panels, their prompts, its manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lorastory.errors import BadImageError, DataError
from lorastory.eval.errors import EvalError
from lorastory.fileio import display_path, display_text, lies_within
from lorastory.generate.manifest import RunManifest
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.rundir import read_manifest
from lorastory.images import load_rgb

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class RunPanel:
    """One panel of a run: its file and the prompt it was rendered from."""

    index: int
    file: str
    path: Path
    prompt: str
    caption: str | None = None


@dataclass
class Run:
    """A run folder as evaluation sees it."""

    folder: Path
    title: str
    manifest: RunManifest | None  # None: a folder of PNG panels without one
    panels: list[RunPanel]


def _manifest_panels(folder: Path, manifest: RunManifest) -> list[RunPanel]:
    panels = []
    for index, record in enumerate(manifest.panels, start=1):
        path = folder / record.file
        if not lies_within(path, folder):  # a plain name that is a link leading out
            raise EvalError(
                f"{display_path(folder / MANIFEST_FILE)}: panel {index} names {display_text(record.file)!r}, "
                "which is not inside the run folder"
            )
        panels.append(RunPanel(index, record.file, path, record.prompt, record.caption))
    return panels


def _png_panels(folder: Path) -> list[RunPanel]:
    panels = []
    for index, path in enumerate(sorted(folder.glob("panel-*.png")), start=1):
        params = read_parameters(path)
        if params is None or not params.prompt:
            raise EvalError(f"{path}: no manifest.json in {folder} and this panel has no stored prompt")
        panels.append(RunPanel(index, path.name, path, params.prompt))
    return panels


def read_run(run_dir: str | Path) -> Run:
    """The panels and prompts of a run folder (``manifest.json``, else the panels' PNG metadata)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such run folder; pass the folder 'lorastory generate' wrote")
    manifest_path = folder / MANIFEST_FILE
    manifest: RunManifest | None = None
    if manifest_path.is_file():
        try:
            manifest = read_manifest(manifest_path)
        except DataError as err:
            raise EvalError(str(err)) from None
        panels = _manifest_panels(folder, manifest)
    else:
        panels = _png_panels(folder)
        if not panels:
            raise EvalError(f"{folder}: no manifest.json and no panel-*.png; pass the folder 'lorastory generate' wrote")
    for panel in panels:
        if not panel.path.is_file():
            state = "is not a regular file" if os.path.lexists(panel.path) else "is missing"
            raise EvalError(f"{display_path(panel.path)}: panel listed in the manifest {state}")
    title = manifest.title if manifest is not None else None
    return Run(folder, str(title or ""), manifest, panels)


def load_panel_images(run: Run) -> list[Image.Image]:
    """The panels as RGB images; a broken file is an error naming it."""
    images = []
    for panel in run.panels:
        try:
            images.append(load_rgb(panel.path))
        except BadImageError as err:
            raise EvalError(f"{panel.path}: {err}") from None
    return images
