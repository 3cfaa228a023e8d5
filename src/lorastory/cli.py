"""The ``lorastory`` command line: thin wrappers that parse, call the library, print.

Errors a user can fix are :class:`LorastoryError`: one red line and exit code 1
(``--debug`` shows the traceback). Usage errors exit 2.
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorastory import __version__
from lorastory.errors import LorastoryError, first_line
from lorastory.fileio import display_path, display_text


@dataclass
class _Options:
    debug: bool = False


app = typer.Typer(
    name="lorastory",
    help="From a folder of images to an illustrated story in a trained style.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Import, curate (Data-Juicer recipes) and export training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")

console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"lorastory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    if isinstance(ctx.obj, _Options):
        ctx.obj.debug = debug


# --- data ------------------------------------------------------------------------------


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
    from lorastory.data.dataset import ImportConfig, import_dataset

    config = ImportConfig.from_dict(
        dict(source=src, kind=source, caption=caption, text_column=text_column, split=split, subset=subset,
             allow_empty_caption=allow_empty_caption),
        source="options",
    )
    result = import_dataset(config, out, overwrite=overwrite)
    _print_skips(result.skipped)
    others = sum(1 for item in result.skipped if item["reason"].startswith(("not an image type", "caption file with no image")))
    listed = f", {others} of them files that are not images: see import_report.json" if others else ""
    console.print(f"Imported {result.written} images into {display_path(out / 'metadata.jsonl')} "
                  f"({len(result.skipped)} skipped{listed}).", markup=False)


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
    from lorastory.data.executor import run_recipe
    from lorastory.data.recipe import load_recipe, resolve_dataset_file

    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"'{executor}': choose local or ray", param_hint="--executor")
    if address is not None and executor != "ray":
        raise typer.BadParameter("--address needs --executor ray", param_hint="--address")
    if executor == "ray":
        from functools import partial

        from lorastory.data.executor_ray import run_recipe_ray

        run_recipe = partial(run_recipe_ray, address=address)  # noqa: F811  (same signature otherwise)
    loaded = load_recipe(recipe)
    for key in loaded.unknown_keys():
        err_console.print(f"[yellow]warning:[/] {escape(str(recipe))}: unknown key '{escape(key)}' ignored (a typo?)")
    if loaded.ignored_keys():
        err_console.print(
            f"[dim]note: Data-Juicer engine keys with no effect here: {', '.join(loaded.ignored_keys())}[/]"
        )
    for warning in loaded.range_warnings():
        err_console.print(f"[yellow]warning:[/] {escape(str(recipe))}: {escape(warning)}")
    if quiet or not console.is_terminal:
        result = run_recipe(loaded, processes=np)
    else:
        from rich.progress import Progress

        total = _count_lines(resolve_dataset_file(loaded))
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("curating", total=total)
            result = run_recipe(loaded, processes=np, on_progress=lambda n: progress.update(task, completed=n))
    table = Table(title=escape(f"{result.input_path.name} → {result.export_path.name}"))
    for column in ("op", "in", "kept", "dropped", "errors", "seconds"):
        table.add_column(column, justify="left" if column == "op" else "right")
    for row in [result.read, *result.ops]:
        table.add_row(escape(row.name), str(row.n_in), str(row.kept), str(row.dropped), str(row.errors), f"{row.seconds:.2f}")
    console.print(table)
    _print_skips([{"item": f"line {s.line} ({s.stage})", "reason": s.reason} for s in result.skipped])
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
    from lorastory.data.dataset import export_csv

    result = export_csv(result_jsonl, out, text_key=text_key, image_key=image_key, overwrite=overwrite)
    _print_skips(result.skipped)
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
    from lorastory.errors import ConfigError
    from lorastory.toyworld.dataset import write_toy_dataset

    try:
        written = write_toy_dataset(out, count=count, style=style, lang=lang, seed=seed, size=size, bad_samples=bad_samples)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    bad = ", ".join(f"{len(names)} {kind.replace('_', ' ')}" for kind, names in written.bad.items())
    console.print(f"Wrote {len(written.good)} {style} pictures to {out}" + (f" plus bad samples: {bad}" if bad else ""), markup=False)


@data_app.command("ops")
def data_ops() -> None:
    """List the Data-Juicer operators this executor runs, with their parameters."""
    from lorastory.data.ops import OpParams, registered_ops

    common = set(OpParams.model_fields)
    table = Table()
    table.add_column("op")
    table.add_column("parameters (defaults)")
    for name, cls in sorted(registered_ops().items()):
        params = ", ".join(
            f"{field}={info.default!r}" for field, info in cls.Params.model_fields.items() if field not in common
        )
        table.add_row(name, params)
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
    from lorastory.models.clip import load_clip
    from lorastory.data.clip_table import clip_score_dataset

    scores = clip_score_dataset(dataset, load_clip(clip, device), batch_size=batch_size, text_key=text_key,
                                image_key=image_key, out_csv=out)
    table = Table(title=escape(f"{dataset.name}: CLIP {clip}, softmax over the texts of each batch"))
    for column in ("batch", "#", "image", "text", "prob", "best match", "cosine", "CLIP-T", "probs over the batch's texts"):
        table.add_column(column, justify="right" if column in ("batch", "#", "prob", "best match", "cosine", "CLIP-T") else "left")
    for row in scores.rows[: max(0, show)]:
        probs = " ".join(f"{p:.2f}" for p in row.probs) if len(row.probs) <= 8 else f"({len(row.probs)} values in the CSV)"
        table.add_row(str(row.batch), str(row.position), escape(Path(row.image).name), escape(_clip_text(row.text)),
                      f"{row.prob:.3f}", str(row.best_match), f"{row.cosine:.4f}", f"{row.clip_t:.2f}", probs)
    console.print(table)
    if len(scores.rows) > show:
        console.print(f"... and {len(scores.rows) - show} more rows in the CSV", markup=False)
    _print_skips(scores.skipped)
    console.print(f"Scored {len(scores.rows)} image-text pairs (logit scale {scores.logit_scale:.2f}).\n"
                  f"  csv: {scores.csv_path}", markup=False)


# --- model -----------------------------------------------------------------------------


@model_app.command("tiny")
def model_tiny(
    family: Annotated[str, typer.Option(help="kolors, sdxl, sd15, or clip / chinese-clip (for eval tests).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the diffusers model into.")],
    seed: Annotated[int, typer.Option(help="Weights seed (same seed, same bytes).")] = 0,
    resolution: Annotated[int, typer.Option(min=8, max=4096, help="Native image size in pixels (CLIP: its input size).")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Build a tiny random model of a family as a diffusers (or transformers CLIP) folder, offline and deterministic."""
    from lorastory.fileio import check_output_folder
    from lorastory.models.tiny import build_tiny_model

    check_output_folder(out, overwrite)

    build_tiny_model(family, out, seed=seed, resolution=resolution)
    console.print(f"Wrote tiny {family} model to {out}")


@model_app.command("toy")
def model_toy(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model into.")],
    component: Annotated[str, typer.Option(help="kolors (the toy text-to-image model) or clip (the toy Chinese CLIP).")] = "kolors",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write the embedded toy model (trained by lorastory on its toy world) as a normal model folder."""
    from lorastory.fileio import check_output_folder
    from lorastory.models.toy import write_toy_model

    check_output_folder(out, overwrite)

    write_toy_model(out, component)
    console.print(f"Wrote the toy {component} model to {out}", markup=False)


@model_app.command("tiny-ip-adapter")
def model_tiny_ip_adapter(
    model: Annotated[Path, typer.Option(help="Diffusers model folder whose UNet the adapter must fit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the IP-Adapter (and its image encoder) into.")],
    seed: Annotated[int, typer.Option(help="Weights seed (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Build a tiny random IP-Adapter-Plus for a model, in the family's published layout (for tests and demos)."""
    from lorastory.fileio import check_output_folder, check_outputs_apart
    from lorastory.models.ip_adapter import build_tiny_ip_adapter

    check_outputs_apart([("--out", out)], [("--model", model)])
    check_output_folder(out, overwrite)

    build_tiny_ip_adapter(out, model, seed=seed)
    console.print(f"Wrote a tiny IP-Adapter for {model} to {out} (consistency.ip_adapter: {out})", markup=False)


# --- train -----------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    config_file: Annotated[Optional[Path], typer.Argument(help="Training config YAML (flags override it).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Diffusers folder, hub id or .safetensors.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training folder (metadata.csv or metadata.jsonl).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder.")] = None,
    family: Annotated[Optional[str], typer.Option(help="kolors, sdxl or sd15 (default: detected).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank (default 16).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default 4; strength = alpha/rank).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Training size (default 1024).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data (default 1).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides epochs).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for order, noise and crops.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Save a checkpoint every N steps.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = None,
    center_crop: Annotated[Optional[bool], typer.Option("--center-crop/--random-crop", help="Crop placement.")] = None,
    random_flip: Annotated[Optional[bool], typer.Option("--random-flip", help="Flip images horizontally at random.")] = None,
    buckets: Annotated[Optional[bool], typer.Option("--buckets", help="Aspect-ratio buckets instead of square crops.")] = None,
    train_text_encoder: Annotated[
        Optional[bool], typer.Option("--train-text-encoder", help="Also train a LoRA on the text encoder(s).")
    ] = None,
    gradient_checkpointing: Annotated[
        Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")
    ] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, no, fp16 or bf16.")] = None,
    gradient_accumulation: Annotated[Optional[int], typer.Option(help="Batches per optimizer step.")] = None,
    lr_scheduler: Annotated[Optional[str], typer.Option(help="constant, constant_with_warmup, linear, cosine...")] = None,
    lr_warmup_steps: Annotated[Optional[int], typer.Option(help="Warm-up steps of the lr schedule.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw or adamw8bit (bitsandbytes + CUDA).")] = None,
    snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR-gamma loss weighting (e.g. 5).")] = None,
    noise_offset: Annotated[Optional[float], typer.Option(help="Noise offset (e.g. 0.05) for darker/brighter images.")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Checkpoints to keep (newest).")] = None,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt to sample during training (repeatable).")] = None,
    validation_every: Annotated[Optional[int], typer.Option(help="Sample every N steps.")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="diffusers and/or kohya (repeatable).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Latent/text cache folder (default OUT/cache).")] = None,
    compile: Annotated[Optional[str], typer.Option(
        help="GPU compilation: auto (runs of 200+ steps), off, blocks, or cudagraphs (blocks replayed as CUDA graphs).")
    ] = None,
    gpus: Annotated[
        Optional[int], typer.Option(min=1, help="Train data-parallel on N GPUs of this machine (runs accelerate launch; "
                                                "--batch-size is per GPU).")
    ] = None,
) -> None:
    """Train a LoRA: OUT/lora.safetensors, checkpoints, samples, TensorBoard logs."""
    from lorastory.config import read_yaml
    from lorastory.train.config import TrainConfig
    from lorastory.train.launch import is_main_process, run_on_gpus
    from lorastory.train.trainer import check_run_paths, train

    values = read_yaml(config_file) if config_file else {}
    if not isinstance(values, dict):
        from lorastory.errors import ConfigError

        raise ConfigError(f"{config_file}: expected a mapping of settings")
    flags = dict(
        model=model, data=data, out=out, family=family, rank=rank, alpha=alpha, resolution=resolution,
        batch_size=batch_size, lr=lr, epochs=epochs, max_steps=max_steps, seed=seed,
        checkpoint_every=checkpoint_every, resume=resume, center_crop=center_crop, random_flip=random_flip,
        buckets=buckets, train_text_encoder=train_text_encoder, gradient_checkpointing=gradient_checkpointing, precision=precision,
        gradient_accumulation=gradient_accumulation, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
        optimizer=optimizer, snr_gamma=snr_gamma, noise_offset=noise_offset, keep_checkpoints=keep_checkpoints,
        validation_prompts=validation_prompt, validation_every=validation_every, save_formats=format,
        cache_dir=cache_dir, compile=compile,
    )
    values.update({k: v for k, v in flags.items() if v is not None})
    config = TrainConfig.from_dict(values, source=str(config_file or "options"))
    check_run_paths(config)  # before any process starts or any model loads
    debug = isinstance(ctx.obj, _Options) and ctx.obj.debug

    def say(message: str) -> None:  # plain text (file names may hold [brackets]), one line per message
        err_console.print(display_text(message), highlight=False, markup=False, soft_wrap=True)

    if gpus and run_on_gpus(config, gpus, debug=debug, say=say):
        return

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("step {task.completed}/{task.total}"), BarColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.2f} img/s"), TimeRemainingColumn())
    show_bar = err_console.is_terminal and is_main_process()
    with Progress(*columns, console=err_console, disable=not show_bar) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"), ips=0.0)

        def show(p) -> None:
            progress.update(task, completed=p.step, total=p.total_steps, loss=p.loss, ips=p.images_per_second)

        result = train(config, on_progress=show, say=say)
    if not result.main_process:
        return
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
    on = f" on {result.processes} processes" if result.processes > 1 else ""
    console.print(f"Trained {result.steps} steps{on}{last}.")
    for file in result.lora_files:
        console.print(f"  LoRA: {file}")
    console.print(f"  run folder: {result.out} (config.yaml, checkpoints/, samples/, logs/)")


# --- generate ------------------------------------------------------------------------------


def _on_off_auto(value: str, flag: str) -> bool | None:
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        from lorastory.errors import ConfigError

        raise ConfigError(f"{flag} must be auto, on or off, not '{value}'")
    return choices[value]


@app.command("generate")
def generate_cmd(
    story_file: Annotated[Path, typer.Argument(help="Story YAML (title, character, style, defaults, panels).")],
    model: Annotated[str, typer.Option(help="Diffusers folder, hub id or .safetensors.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: stories/<story name>).")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA .safetensors to apply.")] = None,
    lora_scale: Annotated[float, typer.Option(help="LoRA strength (a finite number from -100 to 100).")] = 1.0,
    family: Annotated[Optional[str], typer.Option(help="kolors, sdxl or sd15 (default: detected).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Panels per batch (default: auto).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow a .ckpt/.pt LoRA (loaded with weights_only).")] = False,
    consistency: Annotated[Optional[str], typer.Option(
        help="Override the story's consistency mode: none, attention, reference or both.")] = None,
    ip_adapter: Annotated[Optional[str], typer.Option(
        help="IP-Adapter folder or hub id for the reference modes (overrides the story's).")] = None,
    fast: Annotated[Optional[bool], typer.Option(
        "--fast/--no-fast", help="Fuse the LoRA and q/k/v into the weights (default: on a GPU).")] = None,
    compile: Annotated[str, typer.Option(
        help="Compile the repeated UNet/VAE blocks: auto (GPU, stories of 200+ image-steps), on or off.")] = "auto",
    overwrite: Annotated[bool, typer.Option(
        help="Replace an earlier run in --out (only the files it wrote; other files are kept).")] = False,
) -> None:
    """Render a story's panels, manifest and storyboard."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from lorastory.generate.story import generate_story, load_story, with_consistency

    story = load_story(story_file)
    changes = {k: v for k, v in (("mode", consistency), ("ip_adapter", ip_adapter)) if v is not None}
    if changes:
        story = with_consistency(story, **changes)
    out = out or Path("stories") / story_file.stem
    columns = (TextColumn("denoising"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("generate", total=None)
        result = generate_story(
            story, model, out, lora=str(lora) if lora else None, lora_scale=lora_scale, family=family,
            batch_size=batch_size, allow_pickle=allow_pickle, fast=fast, compile=_on_off_auto(compile, "--compile"),
            on_step=lambda done, total: progress.update(task, completed=done, total=total),
            overwrite=overwrite, inputs=[("story file", story_file)],
        )
    console.print(f"Rendered {len(result.panels)} panels in {result.seconds:.1f} s.", markup=False)
    console.print(f"  storyboard: {display_path(result.storyboard)}\n  manifest:   {display_path(result.manifest)}",
                  markup=False)


@app.command("regenerate")
def regenerate_cmd(
    run: Annotated[Path, typer.Argument(help="A story run folder (with manifest.json).")],
    panel: Annotated[int, typer.Option(help="Panel number, from 1.")],
    seed: Annotated[int, typer.Option(help="The new seed (0 to 2**64-1).")],
    model: Annotated[Optional[str], typer.Option(help="Model (default: the one in manifest.json).")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA (default: the one in manifest.json).")] = None,
) -> None:
    """Re-render one panel with a new seed; the other panels stay exactly as they are."""
    from lorastory.generate.story import regenerate_panel

    path = regenerate_panel(run, panel, seed, model=model, lora=str(lora) if lora else None)
    console.print(f"Rewrote {display_path(path)} (seed {seed}), the manifest and the storyboard.", markup=False)


@app.command("grid")
def grid_cmd(
    images: Annotated[list[Path], typer.Argument(help="Panel images, in reading order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Storyboard file to write.")],
    cols: Annotated[int, typer.Option(help="Columns.")] = 2,
    rows: Annotated[Optional[int], typer.Option(help="Rows (default: as many as needed).")] = None,
    spacing: Annotated[int, typer.Option(help="Gap between panels in pixels.")] = 0,
    title: Annotated[Optional[str], typer.Option(help="Title above the grid.")] = None,
    caption: Annotated[Optional[list[str]], typer.Option("--caption", help="Caption per panel (repeatable).")] = None,
    captions_from_metadata: Annotated[
        bool, typer.Option("--captions", help="Caption each panel with the prompt stored in its PNG.")
    ] = False,
    resize: Annotated[Optional[str], typer.Option(help="Final size WxH, e.g. 1024x2048 as in the reference.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Tile images into a storyboard (2 columns by default, CJK captions)."""
    from lorastory.generate.grid import check_grid_output, check_grid_text, parse_size, save_storyboard
    from lorastory.generate.pngmeta import read_parameters

    size = parse_size(resize, "--resize") if resize else None
    check_grid_text(title, caption)
    check_grid_output(out, images, overwrite)
    captions = caption
    if captions_from_metadata and not captions:
        captions = [(p.prompt if (p := read_parameters(image)) else None) for image in images]
    board = save_storyboard(images, out, cols=cols, rows=rows, spacing=spacing, title=title,
                            captions=captions, resize_to=size)
    console.print(f"Wrote {display_path(out)} ({board.width}x{board.height}).", markup=False)


# --- eval ------------------------------------------------------------------------------


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

    from lorastory.eval.report import evaluate_run

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
    if scores.get("storyboard_scored"):
        console.print(f"  annotated storyboard: {scores['storyboard_scored']}", markup=False)
    if scores.get("compare"):
        console.print(f"  LoRA on/off image:    {scores['compare']['image']}", markup=False)


def _num(value: float | None, fmt: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, fmt)


def _signed(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, "+" + fmt)


def _clip_text(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_scores(scores: dict) -> None:
    table = Table(title=escape(f"{scores['title'] or Path(scores['run']).name}: CLIP {scores['clip']['model']}"))
    for column in ("#", "panel", "prompt", "CLIP-T", "aesthetic", "consistency"):
        table.add_column(column, justify="left" if column in ("panel", "prompt") else "right")
    for panel in scores["panels"]:
        prompt = _clip_text(panel["prompt"]) + (" (truncated)" if panel["prompt_truncated"] else "")
        table.add_row(str(panel["index"]), escape(panel["file"]), escape(prompt), _num(panel["clip_t"], ".2f"),
                      _num(panel["aesthetic"], ".2f"), _num(panel["consistency"], ".3f"))
    console.print(table)
    summary = scores["summary"]
    aesthetic = scores["aesthetic"]
    overview = Table(title="summary", show_header=False)
    overview.add_column("metric")
    overview.add_column("value", justify="right")
    overview.add_row("mean CLIP-T", _num(summary["clip_t_mean"], ".2f"))
    overview.add_row("character consistency (whole panels)", _num(summary["consistency"], ".4f"))
    overview.add_row(f"character consistency (subject crop: {summary['subject_crop']})", _num(summary["subject_consistency"], ".4f"))
    overview.add_row("mean aesthetic (LAION, 1-10)",
                     _num(summary["aesthetic_mean"], ".2f", f"n/a ({aesthetic.get('reason', 'not available')})"))
    console.print(overview)
    if scores.get("compare"):
        _print_compare(scores["compare"])
    for note in scores["notes"] + (scores.get("compare") or {}).get("notes", []):
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


# --- demo ------------------------------------------------------------------------------


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path("demo-out"),
    pictures: Annotated[int, typer.Option(min=8, help="Toy-world pictures to draw and curate.")] = 120,
    train_steps: Annotated[int, typer.Option(min=1, help="LoRA training steps.")] = 300,
    story_steps: Annotated[int, typer.Option(min=1, help="Sampling steps per panel.")] = 30,
) -> None:
    """Run the whole job offline on the embedded toy model: data → curation → style LoRA → story → scores."""
    from lorastory.demo import DemoSize, run_demo

    run_demo(out, console, DemoSize(pictures=pictures, train_steps=train_steps, story_steps=story_steps))


# --- ui --------------------------------------------------------------------------------


@app.command("ui")
def ui_cmd(
    host: Annotated[str, typer.Option(help="Address to bind; anything but 127.0.0.1/localhost needs --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 7860,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The only folder the app reads, writes and serves.")] = Path("lorastory-workspace"),
    auth: Annotated[Optional[str], typer.Option(help="USER:PASSWORD login (or set LORASTORY_UI_AUTH).", show_default=False)] = None,
) -> None:
    """The web app: data, training, stories and the gallery in a browser."""
    from lorastory.ui.app import check_bind

    check_bind(host, auth)  # refuse an open bind before anything is built
    console.print(f"workspace: {workspace.resolve()}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]serving on {host}:{port} to other machines; login required[/]")
    from lorastory.ui.app import launch

    launch(workspace, host=host, port=port, auth=auth)


# --- helpers -----------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def _print_skips(skipped: list[dict[str, str]], limit: int = 10) -> None:
    for item in skipped[:limit]:
        err_console.print(f"[yellow]skipped[/] {escape(item['item'])}: {escape(item['reason'])}")
    if len(skipped) > limit:
        err_console.print(f"[yellow]... and {len(skipped) - limit} more (see the report)[/]")


def _quiet_libraries(argv: list[str]) -> None:
    """Keep the model libraries' info logs and progress bars out of our output (not with --debug)."""
    if "--debug" in argv:
        return
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map errors to exit codes (1 user error, 2 usage)."""
    options = _Options()
    _quiet_libraries(sys.argv[1:] if argv is None else argv)
    try:
        # Standalone mode: typer reports usage errors itself (exit 2) and ends with SystemExit.
        app(args=argv, prog_name="lorastory", obj=options)
    except SystemExit as done:
        # Typer maps Ctrl-C to exit code 130 itself; nothing half-written is left (atomic writes).
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except LorastoryError as err:
        if options.debug:
            raise
        _print_error(str(err))
        return 1
    except Exception as err:  # noqa: BLE001  the boundary: expected failures become one line, bugs ask for a report
        if options.debug:
            raise
        expected = _expected_failure(err)
        if expected is not None:
            _print_error(expected)
            return 1
        _print_error(f"unexpected {type(err).__name__}: {first_line(err, 300)}")
        err_console.print("This is a bug in lorastory: please report it with the output of the same command "
                          "run with --debug (lorastory --debug ...).", highlight=False, markup=False)
        return 1
    return 0


def _print_error(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(display_text(message))}", highlight=False, soft_wrap=True)


def _expected_failure(err: Exception) -> str | None:
    """The one line for a failure of the machine rather than of lorastory: a file system, memory or a link."""
    if isinstance(err, OSError) and err.errno is not None:
        where = err.filename if err.filename is not None else None
        what = err.strerror or first_line(err, 300)
        if where is not None:
            hint = _OS_HINTS.get(err.errno, "")
            return f"{display_path(where)}: {what}{hint}"
        return what
    if isinstance(err, MemoryError):
        return "out of memory: use smaller sizes or batches"
    if isinstance(err, RecursionError):
        return "input nested too deeply to read"
    return None


_OS_HINTS = {
    errno.EACCES: " (check the permissions, or choose another output)",
    errno.EPERM: " (check the permissions, or choose another output)",
    errno.EROFS: " (a read-only file system: choose another output)",
    errno.ENOSPC: " (the disk is full: free space or choose another output)",
    errno.EISDIR: " (a folder where a file is expected)",
    errno.ENOTDIR: " (a file where a folder is expected)",
    errno.EEXIST: " (already exists)",
}


if __name__ == "__main__":
    sys.exit(main())
