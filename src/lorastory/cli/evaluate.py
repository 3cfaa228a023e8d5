"""``lorastory eval``: score a story run (and LoRA on/off); ``eval checkpoints``: pick a training run's checkpoint;
``eval sweep``: pick a LoRA's scale."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from lorastory.cli.common import app, clip_text, console, err_console
from lorastory.eval.report import evaluate_run
from lorastory.eval.checkpoints import evaluate_checkpoints
from lorastory.eval.selection import SelectionSettings
from lorastory.eval.sweep import parse_scales, sweep_scales

if TYPE_CHECKING:  # eval loads PIL and the model code: only when a command runs
    from lorastory.eval.scores import Scores


class DefaultToRun(TyperGroup):
    """``lorastory eval RUN`` keeps working: a first argument that is not a subcommand goes to ``eval run``."""

    default_command = "run"

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=DefaultToRun, no_args_is_help=True,
    help="Score a story run ('lorastory eval RUN', the same as 'eval run RUN'), pick a training run's checkpoint "
         "('eval checkpoints RUN') or a LoRA's scale ('eval sweep RUN|LORA').",
)
app.add_typer(eval_app, name="eval")


@eval_app.command("run")
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'lorastory generate'.")],
    clip: Annotated[str, typer.Option(help="CLIP folder or hub id; for Chinese prompts a Chinese CLIP (OFA-Sys/chinese-clip-vit-base-patch16).")] = "openai/clip-vit-base-patch32",
    aesthetic: Annotated[Optional[Path], typer.Option(help="LAION aesthetic predictor weights (.safetensors head or predictor folder); without: n/a.")] = None,
    aesthetic_clip: Annotated[Optional[str], typer.Option(help="CLIP the aesthetic head reads (default: from its metadata or input size).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also render the story with and without its LoRA and compare scores.")] = False,
    annotate: Annotated[bool, typer.Option("--annotate", help="Write storyboard_scored.png with the scores in the captions.")] = False,
    model: Annotated[Optional[str], typer.Option(help="--compare: base model instead of the one the manifest records.")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="--compare: LoRA instead of the one the manifest records.")] = None,
    lora_scale: Annotated[Optional[float], typer.Option(help="--compare: LoRA strength (default: the run's).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when available).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per CLIP batch.")] = 16,
    allow_pickle: Annotated[bool, typer.Option(help="Allow .pth/.pt aesthetic weights (read with torch.load(weights_only=True)).")] = False,
) -> None:
    """Score a run: CLIP-T per panel, character consistency, aesthetics; write scores.json."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("rendering LoRA on/off"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not (compare and err_console.is_terminal)) as progress:
        task = progress.add_task("compare", total=None)
        steps = {"offset": 0, "last": 0}

        def on_step(done: int, total: int) -> None:
            if done < steps["last"]:  # the second render starts again from 0
                steps["offset"] += steps["last"]
            steps["last"] = done
            progress.update(task, completed=steps["offset"] + done, total=2 * total)

        scores = evaluate_run(
            run_dir, clip, aesthetic, aesthetic_clip=aesthetic_clip, device=device, batch_size=batch_size,
            annotate=annotate, compare=compare, allow_pickle=allow_pickle, on_step=on_step,
            compare_options={"model": model, "lora": str(lora) if lora else None, "lora_scale": lora_scale},
        )
    _print_scores(scores)
    console.print(f"Wrote {run_dir / 'scores.json'}", markup=False)
    if scores.storyboard_scored:
        console.print(f"  annotated storyboard: {scores.storyboard_scored}", markup=False)
    if scores.compare:
        console.print(f"  LoRA on/off image:    {scores.compare['image']}", markup=False)


def _num(value: float | None, fmt: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, fmt)


def _signed(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, "+" + fmt)


def _print_scores(scores: Scores) -> None:
    table = Table(title=escape(f"{scores.title or Path(scores.run).name}: CLIP {scores.clip.model}"))
    for column in ("#", "panel", "prompt", "CLIP-T", "aesthetic", "consistency"):
        table.add_column(column, justify="left" if column in ("panel", "prompt") else "right")
    for panel in scores.panels:
        prompt = clip_text(panel.prompt) + (" (truncated)" if panel.prompt_truncated else "")
        table.add_row(str(panel.index), escape(panel.file), escape(prompt), _num(panel.clip_t, ".2f"),
                      _num(panel.aesthetic, ".2f"), _num(panel.consistency, ".3f"))
    console.print(table)
    summary = scores.summary
    aesthetic = scores.aesthetic
    overview = Table(title="summary", show_header=False)
    overview.add_column("metric")
    overview.add_column("value", justify="right")
    overview.add_row("mean CLIP-T", _num(summary["clip_t_mean"], ".2f"))
    overview.add_row("character consistency (whole panels)", _num(summary["consistency"], ".4f"))
    overview.add_row(f"character consistency (subject crop: {summary['subject_crop']})", _num(summary["subject_consistency"], ".4f"))
    overview.add_row("mean aesthetic (LAION, 1-10)",
                     _num(summary["aesthetic_mean"], ".2f", f"n/a ({aesthetic.get('reason', 'not available')})"))
    console.print(overview)
    if scores.compare:
        _print_compare(scores.compare)
    for note in scores.notes + (scores.compare or {}).get("notes", []):
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _print_compare(compare: dict) -> None:
    table = Table(title=escape(f"LoRA {Path(compare['lora']['path']).name} at {compare['lora']['scale']:g}: on vs off, same seeds"))
    for column in ("metric", "with LoRA", "without", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    names = {"clip_t_mean": ("mean CLIP-T", ".2f"), "consistency": ("consistency", ".4f"),
             "subject_consistency": ("consistency (subject crop)", ".4f"), "aesthetic_mean": ("mean aesthetic", ".2f")}
    for key, (label, fmt) in names.items():
        row = compare["summary"][key]
        table.add_row(label, _num(row["with_lora"], fmt), _num(row["without_lora"], fmt), _signed(row["delta"], fmt))
    for panel in compare["panels"]:
        row = panel["clip_t"]
        table.add_row(f"CLIP-T {panel['file']}", _num(row["with_lora"], ".2f"), _num(row["without_lora"], ".2f"),
                      _signed(row["delta"], ".2f"))
    console.print(table)


# --------------------------------------------------------------------------- checkpoints and scales

ClipOpt = Annotated[Optional[str], typer.Option(
    "--clip", help="CLIP folder or hub id that scores (default: the run's eval_clip, else openai/clip-vit-base-patch32).")]
PromptsOpt = Annotated[Optional[Path], typer.Option(
    "--prompts", help="Validation prompts: a text file (one a line) or YAML (prompts, seeds, style, trigger, character...).")]
SeedsOpt = Annotated[int, typer.Option("--seeds", min=1, help="Seeds per prompt (from the run's seed).")]
StyleWeightOpt = Annotated[float, typer.Option("--style-weight", min=0, help="Weight of the style score.")]
ContentWeightOpt = Annotated[float, typer.Option("--content-weight", min=0, help="Weight of the content score.")]
MaxDropOpt = Annotated[Optional[float], typer.Option(
    "--max-content-drop", min=0, help="Refuse candidates whose content CLIP-T is more than this below the base's (default 2).")]
MinContentOpt = Annotated[Optional[float], typer.Option("--min-content", help="Refuse candidates below this content CLIP-T.")]
NearCopyOpt = Annotated[float, typer.Option(
    "--near-copy", min=0.01, max=1.0, help="An output this similar (CLIP cosine) to one training picture is a near-copy.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA when available).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Pictures per pipeline call.")]


def _selection(style_weight: float, content_weight: float, max_content_drop: float | None, min_content: float | None,
               near_copy: float) -> Any:

    drop = {} if max_content_drop is None else {"max_content_drop": max_content_drop}
    return SelectionSettings(style_weight=style_weight, content_weight=content_weight, min_content=min_content,
                             near_copy=near_copy, **drop)


def _print_candidates(candidates: list, column: str, chosen: int) -> None:
    table = Table()
    for name in (column, "style", "style phrase", "content", "memorisation", "near-copies", "combined", "rule"):
        table.add_column(name, justify="left" if name in (column, "rule") else "right")
    for index, c in enumerate(candidates):
        s = c.scores
        rule = "chosen" if index == chosen else ("reference" if index == 0 else (c.why_not or "ok"))
        table.add_row(escape(c.label), _num(s.style, ".3f"), _num(s.style_phrase, ".1f"), _num(s.content, ".2f"),
                      _num(s.memorisation, ".3f"), str(len(s.near_copies)), _num(c.combined, ".1f"), escape(rule))
    console.print(table)


@eval_app.command("checkpoints")
def checkpoints_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'lorastory train' (with --checkpoint-every).")],
    clip: ClipOpt = None, prompts: PromptsOpt = None, seeds: SeedsOpt = 2, style_weight: StyleWeightOpt = 1.0,
    content_weight: ContentWeightOpt = 1.0, max_content_drop: MaxDropOpt = None, min_content: MinContentOpt = None,
    near_copy: NearCopyOpt = 0.95, device: DeviceOpt = None, batch_size: BatchOpt = 8,
) -> None:
    """Render the validation prompts with every checkpoint, score them, copy the best to RUN/best.safetensors."""

    settings = _selection(style_weight, content_weight, max_content_drop, min_content, near_copy)
    report = evaluate_checkpoints(run_dir, clip_model=clip, prompts=prompts, seeds=seeds, settings=settings,
                                  device=device, batch_size=batch_size)
    _print_candidates(report.candidates, "checkpoint", report.choice.index)
    console.print(f"Best: {report.choice.reason}", markup=False)
    console.print(f"  LoRA: {report.best}\n  plot: {report.plot}\n  scores: {Path(report.plot).with_suffix('.json')}",
                  markup=False)
    console.print(f"  {report.seconds_per_checkpoint['total']:.1f} s per checkpoint", markup=False)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@eval_app.command("sweep")
def sweep_cmd(
    target: Annotated[Path, typer.Argument(help="Training run folder (its best.safetensors, else lora.safetensors) or a LoRA file.")],
    scales: Annotated[str, typer.Option("--scales", help="LoRA scales, comma-separated (0 is always scored).")] = "0,0.25,0.5,0.75,1,1.25",
    model: Annotated[Optional[str], typer.Option("--model", help="Base model (default: the run's).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Training folder for style and memorisation (default: the run's).")] = None,
    clip: ClipOpt = None, prompts: PromptsOpt = None, seeds: SeedsOpt = 2, style_weight: StyleWeightOpt = 1.0,
    content_weight: ContentWeightOpt = 1.0, max_content_drop: MaxDropOpt = None, min_content: MinContentOpt = None,
    near_copy: NearCopyOpt = 0.95, device: DeviceOpt = None, batch_size: BatchOpt = 8,
) -> None:
    """Score one LoRA at several scales on the same seeds; recommend a scale (sweep.json, sweep.png)."""

    settings = _selection(style_weight, content_weight, max_content_drop, min_content, near_copy)
    report = sweep_scales(target, parse_scales(scales), model=model, data=data, prompts=prompts, clip_model=clip,
                          seeds=seeds, settings=settings, device=device, batch_size=batch_size)
    _print_candidates(report.candidates, "scale", report.choice.index)
    console.print(f"Recommended scale {report.recommended_scale:g}: {report.choice.reason}", markup=False)
    console.print(f"  plot: {report.plot}\n  scores: {Path(report.plot).with_suffix('.json')}", markup=False)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
