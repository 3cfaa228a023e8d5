"""CPU measurement: checkpoint and scale selection on the toy model (docs/evaluation.md).

Two runs on toy-world pictures in the comic-outline style, both trained with checkpoints:

- **demo-sized**: the demo's LoRA settings (rank 16 on attention and ResNet convolutions, lr 1e-4,
  batch 4) on ``--pictures`` pictures, ``--steps`` steps, a checkpoint every ``--every``;
- **over-trained**: ``--over-pictures`` pictures, ``--over-lr`` and ``--over-steps`` steps: the last
  checkpoints reproduce training pictures.

Each is scored with ``lorastory.eval.checkpoints.evaluate_checkpoints`` (the toy CLIP, two story
prompts × ``--seeds`` seeds, ``--select-steps`` sampling steps), its best LoRA swept over scales, and the
script prints the table, the choice, whether the last checkpoint holds near-copies, the combined score
at the recommended (step, scale) against the final checkpoint's at scale 1, and the seconds (wall and
CPU) per checkpoint. Results as JSON with ``--json``.

    PYTHONPATH=src python bench/eval_checkpoints_toy.py --json /tmp/toy_select.json
    PYTHONPATH=src taskset -c 0,1 python bench/eval_checkpoints_toy.py   # two cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lorastory.data.dataset import ImportConfig, export_csv, import_dataset
from lorastory.eval.checkpoints import evaluate_checkpoints
from lorastory.eval.selection import combined_score
from lorastory.eval.sweep import sweep_scales
from lorastory.generate.story_file import load_story, panel_prompt
from lorastory.models.toy import TOY_RESOLUTION, write_toy_model
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "lorastory" / "examples"


def training_folder(root: Path, pictures: int) -> Path:
    """``pictures`` toy pictures in the outline style, imported and exported as a training folder."""
    target = root / f"train-{pictures}"
    if not (target / "metadata.csv").is_file():
        raw = write_toy_dataset(root / f"raw-{pictures}", count=pictures, style="outlined", seed=0, bad_samples=False)
        import_dataset(ImportConfig(source=str(raw.folder)), root / f"dataset-{pictures}", overwrite=True)
        export_csv(root / f"dataset-{pictures}" / "metadata.jsonl", target, overwrite=True)
    return target


def run_one(root: Path, name: str, pictures: int, steps: int, every: int, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    model, clip = root / "models" / "toy-kolors", root / "models" / "toy-clip"
    for folder, component in ((model, "kolors"), (clip, "clip")):
        if not folder.is_dir():
            write_toy_model(folder, component)
    story = load_story(EXAMPLES / "story_toy.yaml")
    config = TrainConfig(
        model=str(model), data=str(training_folder(root, pictures)), out=str(root / name), resolution=TOY_RESOLUTION,
        rank=16, alpha=16, lr=lr, max_steps=steps, batch_size=4, resume=True, checkpoint_every=every,
        gradient_checkpointing=False, seed=0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
        validation_prompts=[panel_prompt(story, p) for p in story.panels[:2]], validation_style=story.style,
        validation_steps=args.select_steps, validation_cfg=story.defaults.cfg, eval_clip=str(clip), select_best=True,
    )
    started = time.perf_counter()
    train(config, say=lambda _m: None)
    train_seconds = time.perf_counter() - started
    cpu0 = time.process_time()
    report = evaluate_checkpoints(config.out, seeds=args.seeds, batch_size=4)
    cpu_per_checkpoint = (time.process_time() - cpu0) / len(report.candidates)
    sweep = sweep_scales(config.out, [float(s) for s in args.scales.split(",")], seeds=args.seeds, batch_size=4)
    last = report.candidates[-1]
    at_recommended = next(c for c in sweep.candidates if c.scale == sweep.recommended_scale)
    result = {
        "name": name, "pictures": pictures, "steps": steps, "lr": lr, "train_seconds": round(train_seconds, 1),
        "candidates": [{"label": c.label, "style": c.scores.style, "style_phrase": c.scores.style_phrase,
                        "content": c.scores.content, "memorisation": c.scores.memorisation,
                        "memorisation_max": c.scores.memorisation_max, "near_copies": len(c.scores.near_copies),
                        "combined": c.combined, "eligible": c.eligible} for c in report.candidates],
        "choice": report.choice.reason, "recommended_scale": sweep.recommended_scale, "sweep_choice": sweep.choice.reason,
        "last_near_copies": len(last.scores.near_copies),
        "combined_recommended": combined_score(at_recommended.scores, report.settings),
        "combined_last_at_1": last.combined,
        "seconds_per_checkpoint": report.seconds_per_checkpoint,
        "cpu_seconds_per_checkpoint": round(cpu_per_checkpoint, 2),
        "images_per_checkpoint": last.scores.images,
    }
    print(json.dumps(result, indent=1, ensure_ascii=False), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/lorastory-select-bench")
    parser.add_argument("--pictures", type=int, default=115)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--over-pictures", type=int, default=4)
    parser.add_argument("--over-steps", type=int, default=400)
    parser.add_argument("--over-every", type=int, default=50)
    parser.add_argument("--over-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--select-steps", type=int, default=10)
    parser.add_argument("--scales", default="0,0.25,0.5,0.75,1,1.25")
    parser.add_argument("--only", choices=["demo", "over"], default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.root)
    results = []
    if args.only in (None, "demo"):
        results.append(run_one(root, "demo-sized", args.pictures, args.steps, args.every, 1e-4, args))
    if args.only in (None, "over"):
        results.append(run_one(root, "over-trained", args.over_pictures, args.over_steps, args.over_every, args.over_lr, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
