"""``lorastory eval``: score a story run (and LoRA on/off)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorastory.cli.common import app, clip_text, console, err_console
from lorastory.eval.report import evaluate_run

if TYPE_CHECKING:  # eval loads PIL and the model code: only when a command runs
    from lorastory.eval.scores import Scores


@app.command("eval")
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
