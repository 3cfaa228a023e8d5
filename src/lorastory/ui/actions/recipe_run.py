"""Running the Data tab's recipe: checked against the workspace when Run is clicked, then run as a job.

The editor's text is saved as ``recipes/NAME.yaml`` and parsed at once (a bad recipe is refused
before anything is queued); the job reads the rows (every image path must stay inside the
workspace) and runs :func:`lorastory.data.executor.run_recipe`, whose progress callback is the
job's progress and Stop point. A stopped run leaves no half-written result: the executor
writes the result, its stats and reports together at the end, so the previous result stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastory.config import yaml_from_text
from lorastory.data.dataset import read_rows
from lorastory.data.executor import run_recipe
from lorastory.data.executor_stages import RESULT_STAGE, ROWS_STAGE
from lorastory.data.image_keys import image_key_warnings
from lorastory.data.recipe import Recipe, recipe_from_data, resolve_dataset_file
from lorastory.data.report import summary
from lorastory.data.sample import resolve_path
from lorastory.fileio import atomic_write_text
from lorastory.ui.actions.data import workspace_model_paths
from lorastory.ui.jobs import Cancelled, JobContext
from lorastory.ui.workspace import PathRefused, Workspace


@dataclass
class RecipePlan:
    """A recipe from the editor with its paths resolved inside the workspace, ready to run."""

    recipe: Recipe
    input_file: Path
    export: Path
    processes: int | None  # None: the recipe's own np (Data-Juicer's meaning)
    image_keys: set[str] = field(default_factory=set)


def plan_recipe(ws: Workspace, text: str, name: str, processes: int | None = None) -> RecipePlan:
    """Save the editor's recipe as ``recipes/NAME.yaml`` and check it; its paths are workspace paths."""
    path = ws.child("recipes", f"{name}.yaml")
    atomic_write_text(path, text)
    data = yaml_from_text(text, str(path))
    if isinstance(data, dict):
        data["process"] = workspace_model_paths(ws, data.get("process"))  # before any op opens a model
    recipe = recipe_from_data(data, str(path))
    recipe.dataset_path = str(ws.resolve(recipe.dataset_path, must_exist=True))
    recipe.export_path = str(ws.resolve(recipe.export_path))
    input_file = ws.check(resolve_dataset_file(recipe))
    # Any key an op could read images from (ops may set their own image_key).
    keys = {recipe.image_key, "image", "images"} | {op.params.image_key for op in recipe.build_ops() if op.params.image_key}
    return RecipePlan(recipe, input_file, Path(recipe.export_path), max(1, int(processes)) if processes else None, keys)


def check_rows(ws: Workspace, plan: RecipePlan) -> int:
    """Refuse a row naming an image outside the workspace; return how many rows the input has."""
    total = 0
    for number, row, _problem in read_rows(plan.input_file):
        total += 1
        for key in plan.image_keys:
            images = (row or {}).get(key) or []
            for image in [images] if isinstance(images, str) else images if isinstance(images, list) else []:
                if isinstance(image, str) and not ws.is_inside(resolve_path(image, str(plan.input_file.parent))):
                    raise PathRefused(f"{ws.rel(plan.input_file)} line {number}: image {image} is outside the workspace")
    return total


def run_plan(
    plan: RecipePlan, on_progress: Callable[[int], None] | None = None,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run a checked recipe; its report as a dict (what the Data tab shows), with the report files' paths.

    ``on_progress(rows)`` follows the first pass, ``on_stage(stage, done, total)`` every pass of the run.
    """
    warnings = image_key_warnings(plan.recipe, plan.input_file)
    result = run_recipe(plan.recipe, processes=plan.processes, on_progress=on_progress, on_stage=on_stage)
    data = summary(result)
    data["warnings"] = warnings  # the reports were written with the result (trust_remote_code was refused by load_recipe)
    data["report_html"] = str(result.report_html)
    data["report_json"] = str(result.report_json)
    return data


def run_recipe_text(
    ws: Workspace, text: str, name: str, processes: int | None = None, on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Save the editor's recipe as ``recipes/NAME.yaml`` and run it here; ``on_progress(rows done, rows)``."""
    plan = plan_recipe(ws, text, name, processes)
    total = check_rows(ws, plan)
    return run_plan(plan, (lambda done: on_progress(done, total)) if on_progress else None)


def recipe_fingerprint(text: str, processes: int | None) -> str:
    """What a recipe job does: the same text and worker count queued twice is the same work."""
    return f"recipe|{int(processes or 0)}|{text}"


def recipe_job(ws: Workspace, plan: RecipePlan) -> Callable[[JobContext], dict[str, Any]]:
    """A job running ``plan``: progress is each stage's rows done / rows with an ETA ("rows 3/10",
    "image_deduplicator: hashing 120/400"); Stop comes between rows in every stage."""
    export = ws.rel(plan.export)

    def run_job(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, f"reading {ws.rel(plan.input_file)}")
        total = check_rows(ws, plan)
        had_result = plan.export.is_file()
        at = ["rows", 0, total]

        def progress(stage: str, done: int, rows: int) -> None:
            at[:] = [stage, done, rows]
            last = stage in (ROWS_STAGE, RESULT_STAGE) and done >= rows
            ctx.stage(stage, done, rows, "writing the result and report" if last else "")

        try:
            ctx.check()
            report = run_plan(plan, on_stage=progress)
        except Cancelled:
            kept = "still holds the previous result" if had_result else "was not written"
            where = f"after {at[1]}/{at[2]} rows" if at[0] == ROWS_STAGE else f"at {at[0]} {at[1]}/{at[2]}"
            raise Cancelled(f"stopped {where}; {export} {kept}") from None
        ctx.data["export"] = export
        return report

    return run_job
