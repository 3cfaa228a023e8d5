"""The Train tab's actions: a validated TrainConfig from the form, the training job, its samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorastory.errors import ConfigError
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train
from lorastory.ui.actions.models import resolve_model
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import Workspace


def train_config(ws: Workspace, model: str, data: str, name: str, form: dict[str, Any]) -> Any:
    """A validated :class:`TrainConfig` from the form; ``model``/``data`` are workspace paths."""
    values = dict(form)
    prompts = [p.strip() for p in str(values.pop("validation_prompts", "") or "").splitlines() if p.strip()]
    values["max_steps"] = int(values.get("max_steps") or 0) or None
    if not values.get("ema"):
        values.pop("ema_decay", None)  # the form keeps a decay while EMA is off; the config refuses one
    values["trigger_word"] = str(values.get("trigger_word") or "").strip() or None
    for key in ("caption_dropout", "shuffle_tags", "keep_tags", "repeats"):  # a cleared field: the default
        if values.get(key) is None:
            values.pop(key, None)
    for key in ("rank", "resolution", "epochs", "batch_size", "gradient_accumulation", "checkpoint_every",
                "validation_every", "seed", "keep_tags", "repeats"):
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
