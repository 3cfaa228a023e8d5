"""``lorastory data ...``: import, curate with a recipe, export, score a dataset, draw toy data."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorastory.cli.common import clip_text, console, count_lines, data_app, err_console, print_skips
from lorastory.data.clip_table import clip_score_dataset
from lorastory.data.dataset import ImportConfig, export_csv, import_dataset
from lorastory.data.executor import run_recipe
from lorastory.data.executor_ray import run_recipe_ray
from lorastory.data.image_keys import image_key_warnings
from lorastory.data.ops import OpParams, op_summary, registered_ops
from lorastory.data.recipe import load_recipe, resolve_dataset_file
from lorastory.errors import ConfigError
from lorastory.fileio import display_path
from lorastory.models.clip import load_clip
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.data.caption import CaptionConfig, caption_dataset


@data_app.command("import")
def data_import(
    src: Annotated[str, typer.Argument(help="Folder, metadata.jsonl/.csv, saved HF dataset, hub id, or modelscope:ID.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    caption: Annotated[Optional[str], typer.Option(help="One caption for every image (e.g. 二次元).")] = None,
    source: Annotated[str, typer.Option(help="auto, folder, hf or modelscope.")] = "auto",
    split: Annotated[str, typer.Option(help="Split of a HF/ModelScope dataset.")] = "train",
    subset: Annotated[Optional[str], typer.Option(help="Subset (config) name of a hub dataset.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Caption column (default: text, caption, prompt...).")] = None,
    allow_empty_caption: Annotated[bool, typer.Option(help="Keep images that have no caption.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Import images and captions into a Data-Juicer-format dataset (metadata.jsonl + images/)."""
    config = ImportConfig.from_dict(
        dict(source=src, kind=source, caption=caption, text_column=text_column, split=split, subset=subset,
             allow_empty_caption=allow_empty_caption),
        source="options",
    )
    result = import_dataset(config, out, overwrite=overwrite)
    print_skips(result.skipped)
    others = sum(1 for skip in result.skipped if skip.reason.startswith(("not an image type", "caption file with no image")))
    listed = f", {others} of them files that are not images: see import_report.json" if others else ""
    console.print(f"Imported {result.written} images into {display_path(out / 'metadata.jsonl')} "
                  f"({len(result.skipped)} skipped{listed}).", markup=False)


@data_app.command("caption")
def data_caption(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (data import --out) or its metadata.jsonl.")],
    model: Annotated[str, typer.Option(help="Captioner folder or hub id: BLIP, BLIP-2, Florence-2, Qwen2.5-VL, a WD14 tagger, or toy.")] = "Salesforce/blip2-opt-2.7b",
    style: Annotated[str, typer.Option(help="sentence or tags.")] = "sentence",
    language: Annotated[str, typer.Option(help="Caption language of a vision-language model or the toy captioner: zh or en.")] = "en",
    prompt: Annotated[Optional[str], typer.Option(help="Instruction for a vision-language model (BLIP: a caption prefix; Florence-2: a task token).")] = None,
    trigger: Annotated[Optional[str], typer.Option(help="Word put before every new caption (the LoRA's trigger).")] = None,
    trigger_at: Annotated[str, typer.Option(help="Where the trigger goes: start or end of the caption.")] = "start",
    mode: Annotated[str, typer.Option(help="fill (rows with no text), append (to the text), replace (every row).")] = "fill",
    batch_size: Annotated[int, typer.Option(help="Pictures per model call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Longest caption, in tokens.")] = 77,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when available).")] = None,
    threshold: Annotated[float, typer.Option(help="Tagger: probability a general tag needs.")] = 0.35,
    character_threshold: Annotated[float, typer.Option(help="Tagger: probability a character tag needs.")] = 0.85,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Caption (or tag) the pictures of a dataset in place; the old text is kept in text_before_caption."""

    config = CaptionConfig.from_dict(
        dict(model=model, style=style, language=language, prompt=prompt, trigger=trigger, trigger_at=trigger_at, mode=mode, batch_size=batch_size,
             max_new_tokens=max_new_tokens, device=device, general_threshold=threshold, character_threshold=character_threshold),
        source="options",
    )
    if quiet or not console.is_terminal:
        result = caption_dataset(dataset, config)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        speed = TextColumn("{task.fields[rate]}")
        with Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), speed, TimeRemainingColumn(),
                      console=err_console, transient=True) as progress:
            task = progress.add_task("captioning", total=None, rate="")

            def show(done: int, total: int) -> None:
                rate = progress.tasks[0].speed
                progress.update(task, completed=done, total=total, rate=f"{rate:.1f} pictures/s" if rate else "")

            result = caption_dataset(dataset, config, on_progress=show)
    for name, text in result.examples[:3]:
        console.print(f"  {escape(name)}: {escape(clip_text(text, 100))}")
    print_skips(result.failed)
    resumed = f", {result.resumed} from an interrupted run" if result.resumed else ""
    console.print(
        f"Captioned {result.captioned} pictures{resumed} ({result.pictures_per_second:.1f} pictures/s), kept {result.kept}, "
        f"failed {len(result.failed)}.\n  dataset: {display_path(result.metadata)}\n  report:  {display_path(result.report_path)}",
        markup=False,
    )


@data_app.command("run")
def data_run(
    recipe: Annotated[Path, typer.Argument(help="Data-Juicer-format recipe YAML.")],
    np: Annotated[Optional[int], typer.Option("--np", help="Processes (default: the recipe's np).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    executor: Annotated[
        str, typer.Option("--executor", help="local (processes on this machine) or ray (Ray Data; same output).")
    ] = "local",
    address: Annotated[
        Optional[str], typer.Option("--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: a local Ray.")
    ] = None,
) -> None:
    """Run a Data-Juicer recipe unchanged: export jsonl, stats, and a report."""
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"'{executor}': choose local or ray", param_hint="--executor")
    if address is not None and executor != "ray":
        raise typer.BadParameter("--address needs --executor ray", param_hint="--address")
    run = partial(run_recipe_ray, address=address) if executor == "ray" else run_recipe  # the same signature otherwise
    loaded = load_recipe(recipe)
    for key in loaded.unknown_keys():
        err_console.print(f"[yellow]warning:[/] {escape(str(recipe))}: unknown key '{escape(key)}' ignored (a typo?)")
    if loaded.ignored_keys():
        err_console.print(
            f"[dim]note: Data-Juicer engine keys with no effect here: {', '.join(loaded.ignored_keys())}[/]"
        )
    for warning in loaded.range_warnings():
        err_console.print(f"[yellow]warning:[/] {escape(str(recipe))}: {escape(warning)}")
    for warning in image_key_warnings(loaded, resolve_dataset_file(loaded)):
        err_console.print(f"[yellow]warning:[/] {escape(str(recipe))}: {escape(warning)}")
    if quiet or not console.is_terminal:
        result = run(loaded, processes=np)
    else:
        from rich.progress import Progress

        total = count_lines(resolve_dataset_file(loaded))
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("curating", total=total)

            def show(stage: str, done: int, rows: int) -> None:  # every pass of the recipe, each with its count
                progress.update(task, description=escape(stage), completed=done, total=rows)

            result = run(loaded, processes=np, on_stage=show)
    table = Table(title=escape(f"{result.input_path.name} → {result.export_path.name}"))
    for column in ("op", "in", "kept", "dropped", "errors", "seconds"):
        table.add_column(column, justify="left" if column == "op" else "right")
    for row in [result.read, *result.ops]:
        table.add_row(escape(row.name), str(row.n_in), str(row.kept), str(row.dropped), str(row.errors), f"{row.seconds:.2f}")
    console.print(table)
    print_skips(result.skipped)
    console.print(
        f"Kept {result.n_output} of {result.read.n_in} in {result.seconds:.2f} s on {result.processes} process(es).\n"
        f"  result: {display_path(result.export_path)}\n"
        + (f"  stats:  {display_path(result.stats_path)}\n" if result.stats_path else "")
        + f"  report: {display_path(result.report_html)} (and {display_path(result.report_json.name)})",
        markup=False,
    )


@data_app.command("export-csv")
def data_export_csv(
    result_jsonl: Annotated[Path, typer.Argument(help="A curated jsonl (e.g. the recipe's export_path).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training folder to write.")],
    text_key: Annotated[str, typer.Option(help="Caption field.")] = "text",
    image_key: Annotated[Optional[str], typer.Option(help="Image list field (default: image or images).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write metadata.csv (file_name,text) and RGB images: what the trainer reads."""
    result = export_csv(result_jsonl, out, text_key=text_key, image_key=image_key, overwrite=overwrite)
    print_skips(result.skipped)
    console.print(f"Exported {result.written} images to {display_path(out / 'metadata.csv')} ({len(result.skipped)} skipped).", markup=False)


@data_app.command("toyworld")
def data_toyworld(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write PNG + caption .txt pairs into.")],
    count: Annotated[int, typer.Option(help="Good samples to draw.")] = 100,
    style: Annotated[str, typer.Option(help="flat, outlined, pixel or watercolor.")] = "outlined",
    lang: Annotated[str, typer.Option(help="Caption language: en, zh or both (one per picture, at random).")] = "both",
    seed: Annotated[int, typer.Option(help="Same seed, same pictures and captions.")] = 0,
    size: Annotated[int, typer.Option(help="Picture side in pixels.")] = 128,
    bad_samples: Annotated[bool, typer.Option(help="Add too-small, wrong-aspect, duplicate, mis-captioned and truncated samples.")] = True,
) -> None:
    """Draw a captioned toy-world image folder in a render style (what the demo curates and trains on)."""
    try:
        written = write_toy_dataset(out, count=count, style=style, lang=lang, seed=seed, size=size, bad_samples=bad_samples)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    bad = ", ".join(f"{len(names)} {kind.replace('_', ' ')}" for kind, names in written.bad.items())
    console.print(f"Wrote {len(written.good)} {style} pictures to {out}" + (f" plus bad samples: {bad}" if bad else ""), markup=False)


@data_app.command("ops")
def data_ops() -> None:
    """List the Data-Juicer operators this executor runs: what each does and its parameters."""
    common = set(OpParams.model_fields)
    table = Table()
    table.add_column("op")
    table.add_column("what it does")
    table.add_column("parameters (defaults)")
    for name, cls in sorted(registered_ops().items()):
        params = ", ".join(
            f"{field}={info.default!r}" if not info.is_required() else f"{field} (required)"
            for field, info in cls.Params.model_fields.items()
            if field not in common
        )
        table.add_row(name, escape(op_summary(cls)), escape(params))
    console.print(table)


@data_app.command("clip-score")
def data_clip_score(
    dataset: Annotated[Path, typer.Argument(help="A result jsonl (data run) or metadata.csv (data export-csv).")],
    clip: Annotated[str, typer.Option(help="CLIP model folder or hub id.")] = "openai/clip-vit-base-patch32",
    batch_size: Annotated[int, typer.Option(help="Images per batch; the softmax is over a batch's texts (8 as in the reference, 0: one batch).")] = 8,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="CSV to write (default: DATASET_clip_scores.csv beside it).")] = None,
    text_key: Annotated[str, typer.Option(help="Caption field of a jsonl.")] = "text",
    image_key: Annotated[Optional[str], typer.Option(help="Image list field of a jsonl (default: image or images).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: CUDA when available).")] = None,
    show: Annotated[int, typer.Option(help="Rows to print (all rows go to the CSV).")] = 50,
) -> None:
    """The reference workflow's CLIP table: softmax of image-text logits per batch, plus cosine and CLIP-T."""
    scores = clip_score_dataset(dataset, load_clip(clip, device), batch_size=batch_size, text_key=text_key,
                                image_key=image_key, out_csv=out)
    table = Table(title=escape(f"{dataset.name}: CLIP {clip}, softmax over the texts of each batch"))
    for column in ("batch", "#", "image", "text", "prob", "best match", "cosine", "CLIP-T", "probs over the batch's texts"):
        table.add_column(column, justify="right" if column in ("batch", "#", "prob", "best match", "cosine", "CLIP-T") else "left")
    for row in scores.rows[: max(0, show)]:
        probs = " ".join(f"{p:.2f}" for p in row.probs) if len(row.probs) <= 8 else f"({len(row.probs)} values in the CSV)"
        table.add_row(str(row.batch), str(row.position), escape(Path(row.image).name), escape(clip_text(row.text)),
                      f"{row.prob:.3f}", str(row.best_match), f"{row.cosine:.4f}", f"{row.clip_t:.2f}", probs)
    console.print(table)
    if len(scores.rows) > show:
        console.print(f"... and {len(scores.rows) - show} more rows in the CSV", markup=False)
    print_skips(scores.skipped)
    console.print(f"Scored {len(scores.rows)} image-text pairs (logit scale {scores.logit_scale:.2f}).\n"
                  f"  csv: {scores.csv_path}", markup=False)
