"""The Train tab's actions: a validated TrainConfig from the form, the training job, its samples."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, LorastoryError
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train
from lorastory.ui.actions.models import DEFAULT_CLIP, check_hub_id, check_machine, resolve_model
from lorastory.ui.actions.history import loss_history
from lorastory.ui.jobs import Cancelled, JobContext
from lorastory.ui.workspace import Workspace
from lorastory.eval.checkpoints import evaluate_checkpoints
from lorastory.eval.checkpoints import read_checkpoints_report
from lorastory.eval.sweep import read_sweep_report
from lorastory.eval.sweep import sweep_scales

_SAMPLE_RE = re.compile(r"^step-(\d+)-(\d+)$")  # what train/validation.py names a sample


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
    check_run_name(ws, name, bool(values.get("resume")))
    data_dir = ws.resolve(data, must_exist=True)
    if not (data_dir / "metadata.csv").is_file():
        raise ConfigError(f"{data}: not a training folder (no metadata.csv); export one from the Data tab")
    return TrainConfig.from_dict(
        {**values, "model": resolve_model(ws, model), "data": str(data_dir), "out": str(ws.child("runs", name)),
         "validation_prompts": prompts},
        source="training form",
    )


def check_run_name(ws: Workspace, name: str, resume: bool) -> None:
    """A run name already used is refused unless the run is resumed: nothing is overwritten silently."""
    folder = ws.child("runs", name)
    if folder.exists() and any(folder.iterdir()) and not resume:
        raise ConfigError(f"runs/{name} already exists; tick 'resume from the newest checkpoint' to continue it, "
                          "or choose another run name")


def train_job(ws: Workspace, config: Any) -> Callable[[JobContext], Any]:
    """The background job for one training run; progress, losses and log lines go to the job.

    Stop ends the run after the current step with a checkpoint and the LoRA of that step written
    (before training begins: at the next cache entry, keeping those written). A hub id that cannot be
    had here is refused now, before the job is queued, and so is a base dtype this machine cannot run.
    """
    check_hub_id(config.model, "model")
    check_machine(config.base_dtype)
    def run(ctx: JobContext) -> dict[str, Any]:
        earlier = loss_history(config.out) if config.resume else []
        ctx.data.update(out=config.out, steps=[], losses=[])

        def on_progress(p: Any) -> None:
            if not ctx.data["steps"]:  # a resumed run's plot starts with the steps before the checkpoint
                ctx.data["steps"] += [step for step, _ in earlier if step < p.step]
                ctx.data["losses"] += [loss for step, loss in earlier if step < p.step]
            ctx.data["steps"].append(p.step)
            ctx.data["losses"].append(p.loss)
            ctx.stage("training: step", p.step, p.total_steps,
                      f"loss {p.loss:.4f}, {p.images_per_second:.2f} img/s", check=False)

        ctx.progress(0.0, "loading the model")
        result = train(config, on_progress=on_progress, say=lambda line: ctx.log(line, check=False),
                       on_stage=lambda stage, done, total: ctx.stage(stage, done, total, check=False),
                       stop=ctx.stop_event)
        if result.stopped:
            files = ", ".join(ws.rel(p) for p in result.lora_files)
            raise Cancelled(f"stopped at step {result.steps}: the LoRA ({files}) and a checkpoint were written; "
                            "tick 'resume from the newest checkpoint' and start again to continue")
        if config.select_best:  # the same selection as `lorastory train --select-best`
            checkpoints_job(ws, str(result.out))(ctx)
        return {"lora": [ws.rel(p) for p in result.lora_files], "steps": result.steps}

    return run


def run_samples(ws: Workspace, out: str | None) -> list[tuple[str, str]]:
    """Validation samples of a training run, newest last, each labelled with its step and prompt."""
    if not out:
        return []
    folder = ws.check(out) / "samples"
    if not folder.is_dir():
        return []
    try:
        prompts = TrainConfig.from_yaml(folder.parent / "config.yaml").validation_prompts
    except (LorastoryError, OSError):
        prompts = []
    found = []
    for path in sorted(folder.glob("*.png")):
        if ws.is_inside(path):
            found.append((str(path), sample_label(path.stem, prompts)))
    return found


def sample_label(stem: str, prompts: list[str]) -> str:
    """``step-000050-01`` → ``step 50: <prompt 2>`` (the file name where it is not one of ours)."""
    match = _SAMPLE_RE.match(stem)
    if match is None:
        return stem
    step, index = int(match.group(1)), int(match.group(2))
    return f"step {step}: {prompts[index]}" if index < len(prompts) else f"step {step}, prompt {index + 1}"


def loss_frame(steps: list[int], losses: list[float], weight: float = 0.9) -> Any:
    """The loss plot's data: the raw loss and an exponential moving average of it (TensorBoard's smoothing,
    debiased so the first points are not pulled to zero), as rows of step, loss and series."""
    import pandas as pd

    smoothed, average = [], 0.0
    for number, loss in enumerate(losses, start=1):
        average = weight * average + (1 - weight) * loss
        smoothed.append(average / (1 - weight**number))
    series = pd.Series(["raw"] * len(losses) + [f"smoothed ({weight:g})"] * len(smoothed), dtype="str")
    # A typed frame even when empty (before the first step): the plot takes "series" as a category from the start.
    return pd.DataFrame({"step": pd.Series(list(steps) * 2, dtype="int64"),
                         "loss": pd.Series(list(losses) + smoothed, dtype="float64"), "series": series})


def checkpoint_choice(ws: Workspace, out: str | None) -> tuple[str | None, str]:
    """A training run's checkpoint scores as the Train tab shows them: the plot and the recommendation
    (from ``RUN/eval/checkpoints.json``; the sweep's recommended scale when there is one)."""

    if not out:
        return None, ""
    folder = ws.check(out)
    report = read_checkpoints_report(folder)
    if report is None:
        return None, ""
    plot = Path(report.plot)
    text = f"**Recommended checkpoint:** {report.choice.reason} → `{ws.rel(report.best)}`"
    sweep = read_sweep_report(report.best)
    if sweep is not None:
        text += f"\n\n**Recommended LoRA scale:** {sweep.recommended_scale:g} ({sweep.choice.reason})"
    return (str(plot) if plot.is_file() and ws.is_inside(plot) else None), text


def checkpoints_job(ws: Workspace, out: str, clip_model: str | None = None) -> Callable[[JobContext], Any]:
    """Score every checkpoint of a training run, then sweep the chosen LoRA's scales.

    The CLIP is the run's ``eval_clip``, else ``clip_model`` (a workspace folder; default: the toy CLIP,
    since no hub is reachable from the app).
    """

    folder = ws.resolve(out, must_exist=True)
    config = TrainConfig.from_yaml(folder / "config.yaml")
    clip = config.eval_clip or str(ws.resolve(clip_model or DEFAULT_CLIP, must_exist=True))

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.data["out"] = str(folder)

        def step(label: str, done: int, total: int) -> None:
            ctx.stage(f"{label}: step", done, total)

        ctx.progress(0.0, "scoring the checkpoints")
        report = evaluate_checkpoints(folder, clip_model=clip, on_step=step)
        ctx.progress(0.0, "scoring LoRA scales")
        sweep = sweep_scales(folder, clip_model=clip, on_step=step)
        return {"best": ws.rel(report.best), "reason": report.choice.reason, "scale": sweep.recommended_scale}

    return run
