"""CPU measurement: the demo's story scores with an fp8-stored base (issue 21: style and content within 1 point).

The toy model (``lorastory model toy``) and a style LoRA trained as ``lorastory demo`` trains it (rank 16 on
attention and ResNet convolutions, lr 1e-4, batch 4, ``--train-steps`` steps on ``--pictures`` captioned toy-world
pictures in the comic-outline style; or ``--lora PATH``, e.g. a demo folder's ``lora/best.safetensors``) draw the
demo's story (``examples/story_toy.yaml``, 30 steps) once per variant, and the demo's scorer (the toy CLIP through
``lorastory.eval.report.evaluate_run``) gives each the demo's two numbers: the style score (similarity to the
style phrase) and the content score (CLIP-T of the prompts without it), both ×100, i.e. in points.

Variants, each on a freshly loaded pipeline with the LoRA fused (``lorastory.generate.speed.prepare_for_speed``,
the path ``lorastory generate --base-dtype`` takes, LoRA and q/k/v fused on every variant so that fp8 is the only
difference):

- **fp32**: the precision the demo renders in on the CPU (not by default: it is the slowest on the CPU);
- **bf16**: the pipeline in bf16 (the GPU's precision), the reference of the criterion;
- **fp8-weights**: the bf16 pipeline with the UNet's transformer-block Linear layers and the text encoder's
  stored in float8 e4m3 (``prepare_for_speed(base_dtype="fp8-weights")``, torchao's weight-only config: bf16
  matmuls, which torchao runs on the CPU too);
- **no LoRA** (bf16): for scale, how far the LoRA itself moves the two scores.

``lorastory generate --base-dtype`` refuses the CPU (``models.fp8.check_base_dtype``: the point of fp8 is GPU
memory and speed), so this script calls ``prepare_for_speed`` on the CPU pipeline itself and hands the prepared
pipeline to ``generate_story``. fp8 matmuls (``fp8``) need CUDA 8.9+ and are not measured here.

    PYTHONPATH=src python bench/fp8_toy_scores.py --json /tmp/fp8_toy.json
    PYTHONPATH=src python bench/fp8_toy_scores.py --lora demo-out/lora/best.safetensors   # the demo's own LoRA
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorastory.data.dataset import ImportConfig, export_csv, import_dataset
from lorastory.eval.report import evaluate_run, load_scorers
from lorastory.generate.speed import prepare_for_speed
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import load_story
from lorastory.images import load_rgb
from lorastory.models.lora.apply import apply_lora
from lorastory.models.registry import load_pipeline
from lorastory.models.toy import TOY_RESOLUTION, write_toy_model
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "lorastory" / "examples"
CRITERION = 1.0  # points: issue 21's "style and content scores within 1 point"
VARIANTS = {  # name -> (pipeline dtype, base dtype, with the LoRA)
    "fp32": (torch.float32, "default", True),
    "bf16": (torch.bfloat16, "default", True),
    "fp8-weights": (torch.bfloat16, "fp8-weights", True),
    "no LoRA (bf16)": (torch.bfloat16, "default", False),
}


def toy_models(root: Path) -> tuple[Path, Path]:
    """The toy Kolors and toy CLIP folders under ``root`` (written once)."""
    folders = []
    for component in ("kolors", "clip"):
        folder = root / "models" / f"toy-{component}"
        if not any(folder.glob("*.json")):
            write_toy_model(folder, component)
        folders.append(folder)
    return folders[0], folders[1]


def train_lora(root: Path, model: Path, pictures: int, steps: int) -> tuple[Path, float]:
    """The demo's style LoRA (its settings, Chinese captions with the style phrase), trained once; path and seconds."""
    run = root / f"lora-{pictures}-{steps}"
    if (run / "lora.safetensors").is_file():
        return run / "lora.safetensors", 0.0
    data = root / f"train-{pictures}"
    if not (data / "metadata.csv").is_file():
        raw = write_toy_dataset(root / f"raw-{pictures}", count=pictures, style="outlined", lang="zh", seed=0,
                                bad_samples=False)
        import_dataset(ImportConfig(source=str(raw.folder)), root / f"dataset-{pictures}", overwrite=True)
        export_csv(root / f"dataset-{pictures}" / "metadata.jsonl", data, overwrite=True)
    config = TrainConfig(
        model=str(model), data=str(data), out=str(run), resolution=TOY_RESOLUTION, rank=16, alpha=16, lr=1e-4,
        max_steps=steps, batch_size=4, gradient_checkpointing=False, seed=0,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
    )
    started = time.perf_counter()
    train(config, say=lambda _m: None)
    return run / "lora.safetensors", time.perf_counter() - started


def render(name: str, model: Path, lora: Path, scale: float, out: Path, steps: int) -> dict[str, Any]:
    """Draw the demo's story with variant ``name``; its folder, seconds and what the speed setup did."""
    dtype, base_dtype, with_lora = VARIANTS[name]
    pipe = load_pipeline(str(model), None, dtype=dtype)
    if with_lora:
        apply_lora(pipe, lora, scale=scale)
    speed = prepare_for_speed(pipe, base_dtype=base_dtype, device=torch.device("cpu"))
    story = load_story(EXAMPLES / "story_toy.yaml")
    story.defaults = story.defaults.model_copy(update={"steps": steps})
    started = time.perf_counter()
    # fast=False: the pipeline is prepared already (generate_story would refuse base_dtype on the CPU).
    result = generate_story(story, str(model), out, pipe=pipe, fast=False, batch_size=8, overwrite=True,
                            device="cpu")
    return {"folder": str(result.out), "render_s": round(time.perf_counter() - started, 1), "speed": str(speed),
            "panels": [str(p) for p in result.panels]}


def psnr(a: list[str], b: list[str]) -> float:
    """The lowest per-panel PSNR (dB) of one run's panels against another's."""
    worst = float("inf")
    for x, y in zip(a, b):
        u = np.asarray(load_rgb(x), dtype=np.float64)
        v = np.asarray(load_rgb(y), dtype=np.float64)
        mse = float(((u - v) ** 2).mean())
        worst = min(worst, float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return round(worst, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/lorastory-fp8-toy", help="folder for the models, data, LoRA, stories")
    parser.add_argument("--json", default=None)
    parser.add_argument("--lora", default=None, help="a toy LoRA to use instead of training one")
    parser.add_argument("--lora-scale", type=float, default=1.0)
    parser.add_argument("--pictures", type=int, default=120)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--story-steps", type=int, default=30)
    parser.add_argument("--variants", default="bf16,fp8-weights,no LoRA (bf16)",
                        help="comma-separated, the reference bf16 among them, from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    root = Path(args.work).resolve()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    model, clip = toy_models(root)
    lora, train_s = (Path(args.lora), 0.0) if args.lora else train_lora(root, model, args.pictures, args.train_steps)
    scorers = load_scorers(str(clip))
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "lora": str(lora), "lora_scale": args.lora_scale,
                              "train_s": round(train_s, 1), "story_steps": args.story_steps, "rows": {}}
    for name in names:
        row = render(name, model, lora, args.lora_scale, root / "story" / name.split(" ")[0], args.story_steps)
        summary = evaluate_run(row["folder"], scorers=scorers).summary
        row.update(style=summary["style_score_mean"], content=summary["clip_t_content_mean"],
                   clip_t=summary["clip_t_mean"], consistency=summary["consistency"])
        result["rows"][name] = row
        print(json.dumps({"variant": name, **{k: v for k, v in row.items() if k != "panels"}}), flush=True)
    ref = result["rows"].get("bf16")
    lines = [f"{'variant':<16} {'style':>7} {'content':>8} {'Δstyle':>7} {'Δcontent':>9} {'min PSNR dB':>11}  within 1 pt"]
    for name, row in result["rows"].items():
        if ref is None or name == "bf16":
            lines.append(f"{name:<16} {row['style']:>7.2f} {row['content']:>8.2f}" + ("   (reference)" if ref else ""))
            continue
        row["delta_style"] = round(row["style"] - ref["style"], 3)
        row["delta_content"] = round(row["content"] - ref["content"], 3)
        row["min_psnr_db_vs_bf16"] = psnr(row["panels"], ref["panels"])
        verdict = "(the LoRA's own effect, for scale)"
        if VARIANTS[name][2]:
            row["within_1_point"] = abs(row["delta_style"]) <= CRITERION and abs(row["delta_content"]) <= CRITERION
            verdict = "yes" if row["within_1_point"] else "NO"
        lines.append(f"{name:<16} {row['style']:>7.2f} {row['content']:>8.2f} {row['delta_style']:>+7.2f} "
                     f"{row['delta_content']:>+9.2f} {row['min_psnr_db_vs_bf16']:>11.2f}  {verdict}")
    result["table"] = lines
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
