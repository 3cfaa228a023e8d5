"""What a user waits for: ``lorastory generate`` and ``lorastory train`` from the command to the files on disk.

1. A real-size Kolors folder is written once (``_folders.build_kolors_folder``: random weights in fp16
   safetensors, the hub's layout). ChatGLM3-6B at its published 28 layers is 12.5 GB of random weights;
   ``--text-layers N`` shrinks its depth to save disk and build time, and every row says which depth ran.
2. **generate**: ``lorastory generate examples/story_kolors_anime.yaml --model FOLDER`` (8 panels, 1024²,
   50 steps), timed around the whole subprocess, with the breakdown from ``_phases.py``: load, speed
   setup (fusing, fp8, compile wrappers), text encoding, denoising, VAE decode, PNG writing, grid. **cold**
   runs with an empty TorchInductor kernel cache folder (``TORCHINDUCTOR_CACHE_DIR``), **warm** reuses the
   folder the cold run filled; **fp8** / **fp8-weights** add ``--base-dtype`` (their first run compiles
   the fp8 kernels) and give each panel's PSNR against the bf16 run's. The model files are in the OS
   page cache either way (they were just written): a first read from a cold disk adds its read time.
3. **train**: ``lorastory train examples/train_kolors_fast.yaml`` (``--preset``: batch 8, no gradient
   checkpointing, ``compile: auto``) on ``--images`` pictures at 1024², one epoch unless ``--train-steps``,
   a fresh latent/caption cache each time: time to the first optimizer step, total, and the compile
   choice the log states (100 pictures at batch 8 is 13 steps, too few to repay compiling).

Device commands (repository root, after installing the wheels; each call stays under 3 minutes):

    PYTHONPATH=/tmp/site:src python bench/e2e.py --work /tmp/lsb --only generate --runs cold,warm --json $OUT/e2e_gen.json
    PYTHONPATH=/tmp/site:src python bench/e2e.py --work /tmp/lsb --only train --json $OUT/e2e_train.json
    .venv/bin/python bench/e2e.py --tiny --work bench/out/e2e-tiny          # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _folders import build_kolors_folder, make_data, tiny_story  # noqa: E402
from _timed_run import ROOT, run_lorastory  # noqa: E402

STORY = ROOT / "examples" / "story_kolors_anime.yaml"


def generate_rows(args: argparse.Namespace, model: Path, story: Path) -> list[dict[str, Any]]:
    """One timed ``lorastory generate`` per entry of ``--runs`` (cold empties the kernel cache folder first)."""
    kernels = args.work / "kernel-cache"
    rows = []
    for run in args.runs.split(","):
        if run == "cold":
            shutil.rmtree(kernels, ignore_errors=True)
        kernels.mkdir(parents=True, exist_ok=True)
        cached = sum(1 for _ in kernels.rglob("*"))
        out = args.work / f"story-{run}"
        dtype = ["--base-dtype", run] if run in ("fp8", "fp8-weights") else []
        command = ["generate", str(story), "--model", str(model), "--out", str(out), "--overwrite", *dtype,
                   *shlex.split(args.generate_args)]
        row = run_lorastory(f"generate-{run}", command, args.work, env={"TORCHINDUCTOR_CACHE_DIR": str(kernels)},
                            timeout=args.timeout)
        manifest = out / "manifest.json"
        if manifest.is_file():
            record = json.loads(manifest.read_text(encoding="utf-8"))
            row.update(render_s=record.get("seconds"), speed=record.get("speed"),
                       storyboard=(out / record.get("storyboard", "")).is_file())
        row.update(run=run, kernel_cache_entries_before=cached)
        reference = next((args.work / f"story-{r}" for r in ("warm", "cold") if (args.work / f"story-{r}").is_dir()), None)
        if dtype and reference is not None and manifest.is_file():
            row["psnr_db_vs_bf16"] = panel_psnr(reference, out)
        rows.append(row)
    return rows


def panel_psnr(reference: Path, other: Path) -> list[float]:
    """PSNR (dB) of each panel of ``other`` against the same panel of ``reference`` (8-bit pixels)."""
    import numpy as np
    from PIL import Image

    values = []
    for panel in sorted(reference.glob("panel-*.png")):
        a = np.asarray(Image.open(panel).convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(other / panel.name).convert("RGB"), dtype=np.float64)
        mse = float(((a - b) ** 2).mean())
        values.append(round(10 * np.log10(255.0**2 / mse), 2) if mse else float("inf"))
    return values


def train_row(args: argparse.Namespace, model: Path, data: Path, resolution: int) -> dict[str, Any]:
    """One timed ``lorastory train`` with a fresh cache (what a first run of a new dataset waits for)."""
    out, cache = args.work / "train-run", args.work / "train-cache"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    command = ["train", str(args.preset), "--model", str(model), "--data", str(data), "--out", str(out),
               "--cache-dir", str(cache), "--resolution", str(resolution), "--batch-size", str(args.batch),
               *(["--max-steps", str(args.train_steps)] if args.train_steps else []),
               *(["--precision", "no"] if args.tiny else []), *shlex.split(args.train_args)]
    kernels = args.work / "kernel-cache"
    kernels.mkdir(parents=True, exist_ok=True)
    row = run_lorastory("train", command, args.work, env={"TORCHINDUCTOR_CACHE_DIR": str(kernels)},
                        timeout=args.timeout, batch=args.batch, warm_steps=args.warm)
    row["lora_written"] = (out / "lora.safetensors").is_file()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/e2e"), help="model, data and runs (reused)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default="generate,train", help="generate and/or train, or build (the folder alone)")
    parser.add_argument("--runs", default="cold,warm", help="generate runs, in order, of cold (empties the kernel "
                        "cache), warm, fp8, fp8-weights (--base-dtype; PSNR against the bf16 panels)")
    parser.add_argument("--text-layers", type=int, default=None, help="ChatGLM depth (published: 28)")
    parser.add_argument("--story", type=Path, default=STORY)
    parser.add_argument("--generate-args", default="", help="extra generate options, e.g. '--base-dtype fp8'")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--preset", type=Path, default=ROOT / "examples" / "train_kolors_fast.yaml",
                        help="the training config file the command starts from")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--warm", type=int, default=2, help="training steps left out of img/s")
    parser.add_argument("--train-args", default="", help="extra train options, e.g. '--compile cudagraphs'")
    parser.add_argument("--timeout", type=float, default=560)
    parser.add_argument("--tiny", action="store_true", help="tiny Kolors on the CPU: a smoke test of the script")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = args.work / ("kolors-tiny" if args.tiny else "kolors")
    folder = build_kolors_folder(model, args.text_layers, tiny=args.tiny)
    print(json.dumps({"model_folder": str(model), **folder}), flush=True)
    result: dict[str, Any] = {"model": folder, "text_encoder_layers": folder["text_layers"],
                              "text_encoder_layers_published": folder["text_layers_published"], "rows": []}
    if folder["text_layers"] != folder["text_layers_published"]:
        print(f"note: ChatGLM has {folder['text_layers']} of its {folder['text_layers_published']} layers here: "
              "load and text-encoding times are lower than with the real model", flush=True)
    only = set(args.only.split(","))
    if "generate" in only:
        story = tiny_story(args.story, args.work / "story-tiny.yaml") if args.tiny else args.story
        result["rows"] += generate_rows(args, model, story)
    if "train" in only:
        size = 64 if args.tiny else 1024
        data = args.work / f"data-{args.images}-{size}"
        make_data(data, 8 if args.tiny else args.images, size)
        result["rows"].append(train_row(args, model, data, size))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0 if all(row["rc"] == 0 for row in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
