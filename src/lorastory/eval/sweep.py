"""``lorastory eval sweep RUN|LORA --scales ...``: the same scores across LoRA scales, and a recommended scale.

One LoRA (a run's ``best.safetensors``, else its ``lora.safetensors``, or a file) is applied at
each scale and the validation set rendered at the same seeds; scale 0 (the base model) is always
scored first, as the reference of the content floor. The rule of
:mod:`~lorastory.eval.selection` picks the scale. Written into the run's ``eval/`` folder (for a
file outside a run: ``NAME.eval/`` beside it): ``sweep.json`` (:class:`SweepReport`),
``sweep.png`` (content against style, one point per scale, the recommended one ringed) and
``renders/scale-S/``. :func:`recommended_scale` reads the recommendation back for a LoRA file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


from lorastory import __version__
from lorastory.eval.candidates import CONFIG_FILE, EVAL_DIR, CandidateScorer, read_trained_run
from lorastory.eval.checkpoints import BEST_FILE, RENDERS_DIR, load_training_pictures, timing, validation_set
from lorastory.eval.compare import load_pipe
from lorastory.eval.errors import EvalError
from lorastory.eval.plot import tradeoff_png
from lorastory.eval.selection import SelectionReport, SelectionSettings, choose
from lorastory.eval.validation_set import ValidationSet, read_prompts_file
from lorastory.fileio import atomic_write_json, display_path, file_sha256
from lorastory.models.clip import DEFAULT_CLIP, load_clip

RESULT_FILE = "sweep.json"
PLOT_FILE = "sweep.png"
DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


class SweepReport(SelectionReport):
    """What ``sweep.json`` holds."""

    lora: str
    lora_sha256: str
    recommended_scale: float
    seconds_per_scale: dict[str, float]


def parse_scales(text: str) -> list[float]:
    """``"0,0.25,0.5"`` → the scales, each a finite number from 0 to 4."""
    scales = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise EvalError(f"--scales: '{part.strip()}' is not a number; write e.g. 0,0.25,0.5,0.75,1") from None
        if not 0 <= value <= 4:
            raise EvalError(f"--scales: {value:g} is outside 0..4")
        scales.append(value)
    return sorted(set(scales))


def sweep_folder(lora: Path) -> Path:
    """Where a LoRA's sweep goes: its run's ``eval/`` folder, or ``NAME.eval/`` beside a file outside a run."""
    return lora.parent / EVAL_DIR if (lora.parent / CONFIG_FILE).is_file() else lora.parent / f"{lora.stem}.eval"


def _target(target: Path) -> tuple[Path, Path | None]:
    """(LoRA file, its run folder or None) for a run folder or a LoRA file."""
    if target.is_dir():
        read_trained_run(target)
        for name in (BEST_FILE, "lora.safetensors"):
            if (target / name).is_file():
                return target / name, target
        raise EvalError(f"{display_path(target)}: no {BEST_FILE} or lora.safetensors; train it first")
    if not target.is_file():
        raise EvalError(f"{display_path(target)}: no such run folder or LoRA file")
    return target, target.parent if (target.parent / CONFIG_FILE).is_file() else None


def _settings_from(run: Path | None, model: str | None, data: str | None, prompts: str | Path | None,
                   seeds: int) -> tuple[str, str | None, str | None, ValidationSet, str | None]:
    """(model, family, training folder, validation set, the run's CLIP) from the run and the options."""
    if run is not None:
        _, config = read_trained_run(run)
        return model or config.model, config.family, data or config.data, validation_set(config, prompts, seeds), config.eval_clip
    if model is None or prompts is None:
        raise EvalError("a LoRA file outside a run folder needs --model and --prompts (and --data for the style score)")
    return model, None, data, read_prompts_file(prompts), None


def sweep_scales(
    target: str | Path,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    model: str | None = None,
    data: str | None = None,
    prompts: str | Path | None = None,
    clip_model: str | None = None,
    seeds: int = 2,
    settings: SelectionSettings | None = None,
    device: str | None = None,
    batch_size: int = 8,
    pipe: Any = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> SweepReport:
    """Score ``target``'s LoRA at every scale (scale 0 first), recommend one, write the files (module docstring)."""
    lora, run = _target(Path(target))
    model, family, data, vset, run_clip = _settings_from(run, model, data, prompts, seeds)
    settings = settings or SelectionSettings()
    out = sweep_folder(lora)
    notes: list[str] = []
    clip_source = clip_model or run_clip or DEFAULT_CLIP
    clip = load_clip(clip_source, device)
    training = load_training_pictures(clip, data, notes) if data else None
    if training is None and not data:
        notes.append("no training folder (--data): style and memorisation are not scored")
    pipe = pipe if pipe is not None else load_pipe(model, family, device)
    scorer = CandidateScorer(pipe, clip, training, vset, settings, out / RENDERS_DIR, batch_size, on_step)
    started = time.perf_counter()
    ordered = [0.0] + [s for s in scales if s != 0]
    candidates = [scorer.score(f"scale {s:g}", 0, s, None if s == 0 else lora) for s in ordered]
    choice = choose(candidates, settings)
    points = [(100 * (c.scores.style or 0.0) if training is not None else (c.scores.style_phrase or 0.0),
               c.scores.content, f"{c.scale:g}") for c in candidates]
    x_label = "style: cosine to the training pictures x 100" if training is not None else "style phrase (CLIP-T)"
    plot = tradeoff_png(out / PLOT_FILE, points, x_label, "content (CLIP-T without style)",
                        f"{lora.name} at each scale: {choice.reason}", chosen=choice.index)
    report = SweepReport(
        lorastory_version=__version__, lora=str(lora.resolve()), lora_sha256=file_sha256(lora), model=model,
        clip=clip_source, validation=vset, settings=settings, candidates=candidates, choice=choice,
        recommended_scale=choice.scale, plot=str(plot),
        seconds_per_scale={**timing(candidates), "wall": round((time.perf_counter() - started) / len(candidates), 3)},
        notes=notes,
    )
    atomic_write_json(out / RESULT_FILE, report.model_dump(mode="json"))
    return report


def read_sweep_report(lora: str | Path) -> SweepReport | None:
    """The sweep written for this LoRA file (same bytes), or ``None``."""
    path = Path(lora)
    result = sweep_folder(path) / RESULT_FILE
    if not path.is_file() or not result.is_file():
        return None
    try:
        report = SweepReport.model_validate_json(result.read_bytes())
    except ValueError:
        return None
    return report if report.lora_sha256 == file_sha256(path) else None


def recommended_scale(lora: str | Path) -> float | None:
    """The recommended scale of a LoRA file that was swept, else ``None``."""
    report = read_sweep_report(lora)
    return None if report is None else report.recommended_scale
