"""What the web app's buttons do, one module per tab: library calls, with every path checked against the workspace.

No pipeline logic lives here: importing is :func:`lorastory.data.dataset.import_dataset`,
curating is :func:`lorastory.data.executor.run_recipe`, training is
:func:`lorastory.train.trainer.train`, stories are
:func:`lorastory.generate.story.generate_story`, scoring is
:func:`lorastory.eval.report.evaluate_run`. This package adds only what a
shared web server needs on top: path checks, staging folders that appear
atomically, and progress hooks that let a job be cancelled between steps.
Gradio is not imported here, so all of it is testable without a browser.
"""

from __future__ import annotations

from lorastory.ui.actions.caption import CAPTION_COLUMNS, caption_job, caption_rows, captioner_choices, save_captions
from lorastory.ui.actions.data import (
    add_op,
    curated_choices,
    dataset_choices,
    default_recipe,
    dropped_samples,
    export_for_training,
    import_folder,
    import_upload,
    kept_samples,
    op_defaults,
    op_rows,
    point_recipe,
    train_folder_choices,
)
from lorastory.ui.actions.gallery import PARAM_COLUMNS, eval_job, run_details, story_runs, train_runs
from lorastory.ui.actions.models import (
    DEFAULT_CLIP,
    DEFAULT_MODEL,
    clip_choices,
    ensure_default_model,
    go_offline_without_network,
    ip_adapter_choices,
    lora_choices,
    model_choices,
    resolve_model,
)
from lorastory.ui.actions.recipe_run import plan_recipe, recipe_fingerprint, recipe_job, run_recipe_text
from lorastory.ui.actions.story import (
    STORY_COLUMNS,
    consistency_from_form,
    free_run_name,
    recommended_scale,
    regenerate_job,
    story_from_form,
    story_job,
    story_form_values,
    story_rows,
    story_zip,
)
from lorastory.ui.actions.train import (
    check_run_name,
    checkpoint_choice,
    checkpoints_job,
    loss_frame,
    run_samples,
    train_config,
    train_job,
)

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_MODEL", "PARAM_COLUMNS", "STORY_COLUMNS", "add_op", "clip_choices", "consistency_from_form",
    "curated_choices", "dataset_choices", "default_recipe", "dropped_samples", "ensure_default_model", "eval_job",
    "export_for_training", "import_folder", "import_upload", "ip_adapter_choices", "kept_samples", "lora_choices",
    "model_choices", "op_defaults", "op_rows", "point_recipe", "regenerate_job", "resolve_model", "run_details",
    "run_recipe_text", "run_samples", "story_from_form", "story_job", "story_rows", "story_runs", "story_zip",
    "train_config", "train_folder_choices", "train_job", "train_runs",
    "checkpoint_choice", "checkpoints_job", "recommended_scale",
    "loss_frame",
    "CAPTION_COLUMNS", "caption_job", "caption_rows", "captioner_choices", "save_captions",
    "check_run_name", "free_run_name", "go_offline_without_network", "story_form_values",
    "plan_recipe", "recipe_fingerprint", "recipe_job",
]
