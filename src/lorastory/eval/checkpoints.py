"""``lorastory eval checkpoints RUN``: score every checkpoint of a training run and pick one.

The candidates are the base model (step 0), the LoRA every checkpoint left in
``RUN/loras/step-NNNNNN.safetensors`` (kept even when ``keep_checkpoints`` pruned the checkpoint
itself) and the final ``RUN/lora.safetensors``. Each renders the same validation set
(:mod:`~lorastory.eval.validation_set`) and is scored (:mod:`~lorastory.eval.set_scores`); the
rule in :mod:`~lorastory.eval.selection` chooses. Written:

* ``RUN/eval/checkpoints.json`` — :class:`CheckpointsReport` (every score, the choice, the reason);
* ``RUN/eval/checkpoints.png`` — the scores against the step, the chosen step marked;
* ``RUN/eval/renders/step-N/`` — each candidate's pictures;
* ``RUN/logs/checkpoint_eval`` — TensorBoard scalars ``checkpoints/<score>`` at each step;
* ``RUN/best.safetensors`` — a copy (atomic) of the chosen checkpoint's LoRA, in the default layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from lorastory import __version__
from lorastory.eval.candidates import EVAL_DIR, CandidateScorer, lora_steps, read_trained_run
from lorastory.eval.compare import load_pipe
from lorastory.eval.errors import EvalError
from lorastory.eval.plot import curves_png
from lorastory.eval.selection import Candidate, SelectionReport, SelectionSettings, choose
from lorastory.eval.set_scores import TrainingPictures
from lorastory.eval.validation_set import ValidationSet, from_train_config, read_prompts_file
from lorastory.fileio import atomic_copy, atomic_write_json, display_path
from lorastory.models.clip import DEFAULT_CLIP, load_clip
from lorastory.train.checkpoint import list_checkpoint_loras

RESULT_FILE = "checkpoints.json"
PLOT_FILE = "checkpoints.png"
BEST_FILE = "best.safetensors"
RENDERS_DIR = "renders"
TENSORBOARD_DIR = "checkpoint_eval"


class CheckpointsReport(SelectionReport):
    """What ``checkpoints.json`` holds."""

    run: str
    best: str
    seconds_per_checkpoint: dict[str, float]


def checkpoint_candidates(run: Path) -> list[tuple[int, Path]]:
    """(step, LoRA file) of every kept checkpoint LoRA and the final LoRA, by step."""
    found = dict(list_checkpoint_loras(run))
    final = run / "lora.safetensors"
    if final.is_file():
        step = lora_steps(final)
        if step is None or step not in found:
            found[step if step is not None else max(found, default=0) + 1] = final
    if not found:
        raise EvalError(f"{display_path(run)}: no checkpoint LoRAs (loras/step-*.safetensors) and no lora.safetensors; "
                        "train with --checkpoint-every N")
    return sorted(found.items())


def load_training_pictures(clip: Any, data: str, notes: list[str]) -> TrainingPictures | None:
    """The training pictures' embeddings; without the folder, style and memorisation are not scored."""
    if not Path(data).is_dir():
        notes.append(f"training folder {data} not found: style and memorisation are not scored")
        return None
    return TrainingPictures.from_folder(clip, data)


def validation_set(config: Any, prompts: str | Path | None, seeds: int) -> ValidationSet:
    """The run's validation set, or the ``--prompts`` file's (plain prompts keep the run's settings)."""
    if prompts is None:
        return from_train_config(config, seeds)
    base = ValidationSet(prompts=["-"], seeds=[config.seed + i for i in range(seeds)], style=config.validation_style,
                         steps=config.validation_steps, cfg=config.validation_cfg, width=config.resolution,
                         height=config.resolution)
    return read_prompts_file(prompts, base)


def timing(candidates: list[Candidate]) -> dict[str, float]:
    """Mean seconds per candidate: rendering, scoring, both."""
    count = max(len(candidates), 1)
    render = sum(c.scores.render_seconds for c in candidates) / count
    score = sum(c.scores.score_seconds for c in candidates) / count
    return {"render": round(render, 3), "score": round(score, 3), "total": round(render + score, 3)}


def _log_scalars(folder: Path, candidates: list[Candidate], tag: str) -> None:
    """TensorBoard scalars ``<tag>/<score>`` at each candidate's step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for c in candidates:
            values = {"style": c.scores.style, "style_phrase": c.scores.style_phrase, "content": c.scores.content,
                      "memorisation": c.scores.memorisation, "near_copies": len(c.scores.near_copies),
                      "consistency": c.scores.consistency, "combined": c.combined}
            for name, value in values.items():
                if value is not None:
                    writer.add_scalar(f"{tag}/{name}", value, c.step)
    finally:
        writer.close()


def plot_series(candidates: list[Candidate]) -> dict[str, list[float | None]]:
    """The plotted scores of each candidate, by panel title."""
    return {
        "style (cosine to training pictures)": [c.scores.style for c in candidates],
        "style phrase (CLIP-T)": [c.scores.style_phrase for c in candidates],
        "content (CLIP-T without style)": [c.scores.content for c in candidates],
        "memorisation (max cosine, mean)": [c.scores.memorisation for c in candidates],
        "consistency": [c.scores.consistency for c in candidates],
        "combined": [c.combined for c in candidates],
    }


def evaluate_checkpoints(
    run: str | Path,
    *,
    clip_model: str | None = None,
    prompts: str | Path | None = None,
    seeds: int = 2,
    settings: SelectionSettings | None = None,
    device: str | None = None,
    batch_size: int = 8,
    pipe: Any = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> CheckpointsReport:
    """Render and score every checkpoint of ``run``, choose one, write the files (module docstring)."""
    folder, config = read_trained_run(run)
    settings = settings or SelectionSettings()
    vset = validation_set(config, prompts, seeds)
    found = checkpoint_candidates(folder)
    out = folder / EVAL_DIR
    notes: list[str] = []
    clip_source = clip_model or config.eval_clip or DEFAULT_CLIP
    clip = load_clip(clip_source, device)
    training = load_training_pictures(clip, config.data, notes)
    pipe = pipe if pipe is not None else load_pipe(config.model, config.family, device)
    scorer = CandidateScorer(pipe, clip, training, vset, settings, out / RENDERS_DIR, batch_size, on_step)
    started = time.perf_counter()
    candidates = [scorer.score("step 0 (base)", 0, 1.0, None)]
    candidates += [scorer.score(f"step {step}", step, 1.0, path) for step, path in found]
    choice = choose(candidates, settings)
    chosen = candidates[choice.index]
    best = folder / BEST_FILE
    atomic_copy(chosen.lora or "", best)
    plot = curves_png(out / PLOT_FILE, [c.step for c in candidates], plot_series(candidates), "training step",
                      f"checkpoints of {folder.name}: {choice.reason}", mark=choice.step)
    _log_scalars(folder / "logs" / TENSORBOARD_DIR, candidates, "checkpoints")
    report = CheckpointsReport(
        lorastory_version=__version__, run=str(folder.resolve()), model=config.model, clip=clip_source, validation=vset,
        settings=settings, candidates=candidates, choice=choice, best=str(best), plot=str(plot),
        seconds_per_checkpoint={**timing(candidates), "wall": round((time.perf_counter() - started) / len(candidates), 3)},
        notes=notes,
    )
    atomic_write_json(out / RESULT_FILE, report.model_dump(mode="json"))
    return report


def read_checkpoints_report(run: str | Path) -> CheckpointsReport | None:
    """The run's ``eval/checkpoints.json``, or ``None`` when there is none (or it does not read)."""
    path = Path(run) / EVAL_DIR / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return CheckpointsReport.model_validate_json(path.read_bytes())
    except ValueError:
        return None
