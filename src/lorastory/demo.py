"""``lorastory demo``: the whole job, offline, on the embedded toy model.

A toy-world picture set in a style the toy base model never saw (comic
outlines), with deliberately bad samples and no captions, is imported,
captioned by the toy captioner (its accuracy on held-out pictures printed), curated with a
Data-Juicer-format recipe (shape, aspect ratio, duplicates, toy-CLIP
image-text similarity) and exported; a LoRA learns the style on the CPU; an
8-panel story with one character is drawn with it into a captioned
storyboard; and the toy CLIP scores the story with the LoRA on and off: the
style score should rise while the story's content stays followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lorastory.data.caption import CaptionConfig, caption_dataset
from lorastory.data.dataset import ImportConfig, export_csv, import_dataset
from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe
from lorastory.data.report import write_reports
from lorastory.eval.checkpoints import evaluate_checkpoints
from lorastory.eval.report import evaluate_run
from lorastory.eval.sweep import sweep_scales
from lorastory.errors import OutputError
from lorastory.fileio import atomic_write_text, display_path
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story, load_story, panel_prompt
from lorastory.models.captioners.loader import load_captioner
from lorastory.models.captioners.toy import held_out_accuracy
from lorastory.models.toy import TOY_RESOLUTION, write_toy_model
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.toyworld.vocab import STYLES
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

EXAMPLES = Path(__file__).resolve().parent / "examples"  # shipped as package data
DEMO_STYLE = "outlined"
DEMO_MARKER = "lorastory-demo.txt"
DEMO_SCALES = (0.5, 0.75, 1.0, 1.25)  # and 0, always scored


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does; the defaults are the real demo, tests pass a smaller one."""

    pictures: int = 120
    train_steps: int = 300
    story_steps: int = 30
    checkpoint_every: int = 50  # each checkpoint's LoRA is scored after training (6 of them)
    select_steps: int = 8  # sampling steps of the checkpoint and scale validation pictures (2 a candidate)


def demo_recipe(dataset: Path, export: Path, clip: Path) -> str:
    """The shipped toy recipe (examples/recipe_toy.yaml) pointed at the demo's folders."""
    text = (EXAMPLES / "recipe_toy.yaml").read_text(encoding="utf-8")
    text = text.replace("./toy/dataset/metadata.jsonl", str(dataset))
    text = text.replace("./toy/curated/result.jsonl", str(export))
    return text.replace("./toy/models/toy-clip", str(clip))


def _check_demo_folder(out: Path) -> None:
    """The demo replaces its own sub-folders on a re-run; it never writes into a folder of the user's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {display_path(out)} exists and is not a folder; choose a new --out")
    earlier_demo = (out / DEMO_MARKER).is_file() or (out / "dataset" / "import_report.json").is_file()
    if any(out.iterdir()) and not earlier_demo:
        raise OutputError(f"--out {display_path(out)} is not empty and not an earlier demo folder; choose a new --out")


def _toy_models(out: Path) -> tuple[Path, Path]:
    models = {}
    for component in ("kolors", "clip"):
        folder = out / "models" / f"toy-{component}"
        if not any(folder.glob("*.json")):
            write_toy_model(folder, component)
        models[component] = folder
    return models["kolors"], models["clip"]


def run_demo(out: Path, console: Console, size: DemoSize | None = None) -> None:
    """Draw data, import, curate, export, train, render, score; print where everything went."""
    size = size or DemoSize()
    out = out.resolve()
    _check_demo_folder(out)
    atomic_write_text(out / DEMO_MARKER, "A folder written by 'lorastory demo'; it may replace what it wrote here.\n")
    say = console.print
    console.rule("lorastory demo: toy data → curated set → style LoRA → story → scores, offline")
    model, clip = _toy_models(out)
    drawn = write_toy_dataset(out / "raw", count=size.pictures, style=DEMO_STYLE, seed=0)
    for text in drawn.folder.glob("*.txt"):  # the demo starts from pictures without captions
        text.unlink()
    # Without captions the mis-captioned samples are ordinary pictures: the captioner describes them as they are.
    bad = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in drawn.bad.items() if k != "wrong_caption")
    say(f"1. drew {len(drawn.good)} uncaptioned toy-world pictures in the comic-outline style, plus bad samples: {bad}",
        markup=False)

    imported = import_dataset(ImportConfig(source=str(drawn.folder), allow_empty_caption=True), out / "dataset",
                              overwrite=True)
    say(f"2. imported {imported.written} pictures, skipped {len(imported.skipped)}:")
    for skip in imported.skipped:
        say(f"     {skip.item}: {skip.reason}", markup=False)

    _caption(out / "dataset", say)

    recipe_path = out / "recipe.yaml"
    atomic_write_text(recipe_path, demo_recipe(out / "dataset" / "metadata.jsonl", out / "curated" / "result.jsonl", clip))
    result = run_recipe(load_recipe(recipe_path))
    _, html_report = write_reports(result)
    say(f"4. curated with {recipe_path.name}: kept {result.n_output} of {result.read.n_in}")
    for row in result.ops:
        say(f"     {row.name:<30} in {row.n_in:>4}  kept {row.kept:>4}  dropped {row.dropped:>3}  errors {row.errors}")
    say(f"     report: {html_report}", markup=False)

    exported = export_csv(result.export_path, out / "train", overwrite=True)
    say(f"5. exported {exported.written} training pictures to {out / 'train' / 'metadata.csv'}", markup=False)

    run = out / "lora"
    story = load_story(EXAMPLES / "story_toy.yaml")
    # Outlines are a local, convolutional trait: the LoRA also adapts the ResNet convolutions.
    config = TrainConfig(
        model=str(model), data=str(out / "train"), out=str(run), resolution=TOY_RESOLUTION, rank=16, alpha=16,
        lr=1e-4, max_steps=size.train_steps, batch_size=4, resume=True, checkpoint_every=size.checkpoint_every,
        gradient_checkpointing=False, seed=0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
        validation_prompts=_validation_prompts(story), validation_style=story.style, validation_steps=size.select_steps,
        validation_cfg=story.defaults.cfg, eval_clip=str(clip), select_best=True,
    )
    trained = train(config, say=lambda message: console.print(f"     {message}", markup=False))
    first, last = trained.losses[:20], trained.losses[-20:]
    loss_note = f"loss {sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f}" if first else "already trained"
    say(f"6. trained a style LoRA ({trained.steps} steps, {loss_note}): {run / 'lora.safetensors'}", markup=False)
    best = evaluate_checkpoints(run, seeds=1, batch_size=4)
    sweep = sweep_scales(run, DEMO_SCALES, seeds=1, batch_size=4)
    say(f"   best checkpoint {best.choice.reason}: {best.best}", markup=False)
    say(f"   recommended LoRA scale {sweep.recommended_scale:g} ({sweep.choice.reason})", markup=False)
    say(f"   plots: {best.plot}, {sweep.plot}", markup=False)

    story.defaults = story.defaults.model_copy(update={"steps": size.story_steps})
    rendered = generate_story(story, str(model), out / "story", lora=str(best.best), lora_scale=sweep.recommended_scale,
                              batch_size=8, overwrite=True)
    say(f"7. drew {len(rendered.panels)} panels in {rendered.seconds:.1f} s: {rendered.storyboard}", markup=False)

    scores = evaluate_run(rendered.out, str(clip), annotate=True, compare=True, compare_options={"render_batch_size": 8})
    compare = scores.compare or {}  # compare=True: always there
    on_off = compare["summary"]
    style, content = on_off["style_score_mean"], on_off["clip_t_content_mean"]
    say(
        f"8. scored with the toy CLIP, LoRA on vs off: style score {_fmt(style['with_lora'])} vs {_fmt(style['without_lora'])} "
        f"({_signed(style['delta'])}); story content {_fmt(content['with_lora'])} vs {_fmt(content['without_lora'])} "
        f"({_signed(content['delta'])}); character consistency {scores.summary['consistency']:.3f}",
        markup=False,
    )
    console.rule("done")
    say(f"storyboard:  {rendered.storyboard}", markup=False)
    say(f"scores:      {rendered.out / 'scores.json'}", markup=False)
    say(f"LoRA on/off: {compare['image']}", markup=False)


def _caption(dataset: Path, say: Any) -> None:
    """Caption the imported pictures with the toy captioner in Chinese, the style phrase last (as the story says it)."""
    captioner = load_captioner("toy")
    accuracy = held_out_accuracy(captioner, DEMO_STYLE, count=100)
    config = CaptionConfig(model="toy", language="zh", trigger=STYLES[DEMO_STYLE].zh, trigger_at="end", batch_size=32)
    result = caption_dataset(dataset, config, captioner)
    per_attribute = ", ".join(f"{name} {share:.0%}" for name, share in accuracy.items() if name != "all")
    say(f"3. captioned {result.captioned} pictures with the toy captioner ({result.pictures_per_second:.0f} pictures/s); "
        f"on 100 held-out pictures every attribute right: {accuracy['all']:.0%} ({per_attribute})", markup=False)
    if result.examples:
        say(f"     e.g. {result.examples[0][1]}", markup=False)


def _validation_prompts(story: Story) -> list[str]:
    """Two of the story's prompts (character and style phrase in them), the checkpoints' validation set."""
    return [panel_prompt(story, panel) for panel in story.panels[:2]]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"
