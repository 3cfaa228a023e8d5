"""``lorastory demo``: the job end to end, offline, on generated data.

A generated image folder (with duplicates and broken files) is imported,
curated with the reference workflow's Data-Juicer recipe plus a
deduplicator, and exported; a LoRA is trained on it; the reference
workflow's 8-panel story is rendered with that LoRA into a storyboard and
scored (CLIP-T, character consistency, LoRA on/off).
The embedded default model is a tiny random Kolors (and a tiny random
Chinese CLIP scores the panels), so the pictures are noise until a trained
default ships; every step runs the real code path.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lorastory.data.dataset import ImportConfig, export_csv, import_dataset
from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe
from lorastory.data.report import write_reports
from lorastory.data.synthetic import write_synthetic_folder
from lorastory.eval.report import evaluate_run
from lorastory.fileio import atomic_write_text
from lorastory.generate.story import generate_story, load_story
from lorastory.models.tiny import build_tiny_model
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

EXAMPLES = Path(__file__).resolve().parent / "examples"  # shipped as package data
DEMO_RESOLUTION = 64


def demo_recipe(dataset: Path, export: Path) -> str:
    """The shipped reference recipe (examples/recipe_reference.yaml) pointed at the demo's
    folders, with a deduplicator added: the text a Data-Juicer user would write."""
    text = (EXAMPLES / "recipe_reference.yaml").read_text(encoding="utf-8")
    text = text.replace("./data/data-juicer/input/metadata.jsonl", str(dataset))
    text = text.replace("./data/data-juicer/output/result.jsonl", str(export))
    text = text.replace("np: 4", "np: 2")
    return text + "  - image_deduplicator:\n      method: phash\n"


def run_demo(out: Path, console: Console) -> None:
    """Generate data, import, curate, export, train, render, score; print where everything went."""
    out = out.resolve()
    console.rule("lorastory demo: data → LoRA → story → scores, offline")
    raw = write_synthetic_folder(out / "raw", count=40, seed=0)
    console.print(f"1. generated {raw}")

    imported = import_dataset(ImportConfig(source=str(raw)), out / "dataset", overwrite=True)
    console.print(f"2. imported {imported.written} images, skipped {len(imported.skipped)}:")
    for item in imported.skipped:
        console.print(f"     {item['item']}: {item['reason']}")

    recipe_path = out / "recipe.yaml"
    atomic_write_text(
        recipe_path,
        demo_recipe(out / "dataset" / "metadata.jsonl", out / "curated" / "result.jsonl"),
    )
    result = run_recipe(load_recipe(recipe_path))
    _, html_report = write_reports(result)
    console.print(f"3. curated with {recipe_path.name}: kept {result.n_output} of {result.read.n_in}")
    for row in result.ops:
        console.print(f"     {row.name:<28} in {row.n_in:>3}  kept {row.kept:>3}  dropped {row.dropped:>3}  errors {row.errors}")
    console.print(f"     report: {html_report}")

    exported = export_csv(result.export_path, out / "train", overwrite=True)
    console.print(f"4. exported {exported.written} training images to {out / 'train' / 'metadata.csv'}")

    model = out / "models" / "tiny-kolors"
    if not (model / "model_index.json").is_file():
        build_tiny_model("kolors", model, resolution=DEMO_RESOLUTION)
    run = out / "lora"
    config = TrainConfig(
        model=str(model), data=str(out / "train"), out=str(run), resolution=DEMO_RESOLUTION, rank=4, alpha=4,
        lr=3e-3, max_steps=30, batch_size=2, resume=True, checkpoint_every=10, gradient_checkpointing=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
    )
    trained = train(config, say=lambda message: console.print(f"     {message}", markup=False))
    first, last = trained.losses[:5], trained.losses[-5:]
    loss_note = f"loss {sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f}" if first else "already trained"
    console.print(f"5. trained a LoRA ({trained.steps} steps, {loss_note}): {run / 'lora.safetensors'}")

    story = load_story(EXAMPLES / "story_kolors_anime.yaml")
    story.defaults = story.defaults.model_copy(update={"width": DEMO_RESOLUTION, "height": DEMO_RESOLUTION, "steps": 20})
    rendered = generate_story(story, str(model), out / "story", lora=str(run / "lora.safetensors"))
    console.print(f"6. rendered {len(rendered.panels)} panels in {rendered.seconds:.1f} s")

    clip = out / "models" / "tiny-chinese-clip"
    if not (clip / "config.json").is_file():
        build_tiny_model("chinese-clip", clip)
    scores = evaluate_run(rendered.out, str(clip), annotate=True, compare=True)
    summary, on_off = scores["summary"], scores["compare"]["summary"]
    console.print(
        f"7. scored with a tiny random Chinese CLIP (the numbers exercise the code, not quality): "
        f"mean CLIP-T {_fmt(summary['clip_t_mean'])}, consistency {_fmt(summary['consistency'])}, "
        f"LoRA on minus off: CLIP-T {_fmt(on_off['clip_t_mean']['delta'])}, "
        f"consistency {_fmt(on_off['consistency']['delta'])}"
    )
    console.rule("done")
    console.print(f"storyboard: {rendered.storyboard}", markup=False)
    console.print(f"scores:     {rendered.out / 'scores.json'}", markup=False)
    console.print(f"LoRA on/off: {scores['compare']['image']}", markup=False)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
