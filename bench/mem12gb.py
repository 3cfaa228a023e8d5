"""The 12 GB preset under a 12 GB cap: Kolors LoRA training at 1024² and the 8-panel story, real sizes, random weights.

Each command runs as a user would type it, in a process whose GPU memory is capped with
``torch.cuda.set_per_process_memory_fraction`` (``_step_timer.py --memory-gb``), so it either fits or
stops with an out-of-memory error:

- **train**: ``lorastory train examples/train_kolors_12gb.yaml`` (fp8-stored UNet transformer weights,
  gradient checkpointing, batch 8, 1024²) on the real-size Kolors folder, starting from an empty cache:
  the caption cache is filled with ChatGLM3-6B stored in fp8, inside the same cap. img/s over the steps
  after ``--warm``; peak allocated and reserved memory. ``compile: auto`` will not compile a run this
  short (the log line says so); ``--train-args "--compile blocks"`` measures the compiled steady state.
- **story**: ``lorastory generate examples/story_kolors_anime.yaml --offload`` (8 panels, 1024², 50 steps),
  the command the preset's comments give (the offload plan: prompts encoded once with ChatGLM3-6B stored in
  fp8, then the UNet resident with the batch the cap holds; the row's ``speed`` says what it chose); the
  story's render time (manifest) and the whole command's wall time. The earlier command (diffusers' model
  offload, fp8 UNet, batch 2: 81-89 s) is gone; ``--story-args "--base-dtype fp8-weights --offload --batch-size 2"``
  now runs the plan with that UNet and batch.

The model folder and pictures are ``e2e.py``'s (``_folders.py``; same ``--work`` reuses them).
``--text-layers`` shrinks ChatGLM's depth, which makes the cap easier to meet: the output says so.

    PYTHONPATH=/tmp/site:src python bench/mem12gb.py --work /tmp/lsb --only train --json $OUT/mem12_train.json
    PYTHONPATH=/tmp/site:src python bench/mem12gb.py --work /tmp/lsb --only story --json $OUT/mem12_story.json
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

PRESET = ROOT / "examples" / "train_kolors_12gb.yaml"
STORY = ROOT / "examples" / "story_kolors_anime.yaml"
STORY_OPTIONS = ["--offload"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/e2e"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default="train,story")
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--text-layers", type=int, default=None, help="ChatGLM depth (published: 28)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--train-steps", type=int, default=24)
    parser.add_argument("--warm", type=int, default=4, help="training steps left out of img/s")
    parser.add_argument("--train-args", default="", help="extra train options, e.g. '--compile blocks'")
    parser.add_argument("--story-args", default="", help="options replacing the story's 12 GB options")
    parser.add_argument("--timeout", type=float, default=560)
    parser.add_argument("--tiny", action="store_true", help="tiny Kolors on the CPU: a smoke test (no cap there)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = args.work / ("kolors-tiny" if args.tiny else "kolors")
    folder = build_kolors_folder(model, args.text_layers, tiny=args.tiny)
    result: dict[str, Any] = {"cap_gb": args.cap_gb, "text_encoder_layers": folder["text_layers"],
                              "text_encoder_layers_published": folder["text_layers_published"], "rows": []}
    if folder["text_layers"] != folder["text_layers_published"]:
        print(f"note: ChatGLM has {folder['text_layers']} of its {folder['text_layers_published']} layers here: "
              "the caption cache's memory and time are below the real model's", flush=True)
    only = set(args.only.split(","))
    size = 64 if args.tiny else 1024
    if "train" in only:
        data = args.work / f"data-{args.images}-{size}"
        make_data(data, 8 if args.tiny else args.images, size)
        out, cache = args.work / "train-12gb", args.work / "train-12gb-cache"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        command = ["train", str(PRESET), "--model", str(model), "--data", str(data), "--out", str(out),
                   "--cache-dir", str(cache), "--max-steps", str(args.train_steps), "--checkpoint-every", "0",
                   *(["--resolution", "64", "--precision", "no"] if args.tiny else []), *shlex.split(args.train_args)]
        if args.tiny:  # fp8 needs CUDA: the smoke test runs the preset's other settings
            command += ["--base-dtype", "default"]
        row = run_lorastory("train-12gb", command, args.work, memory_gb=None if args.tiny else args.cap_gb,
                            timeout=args.timeout, batch=8, warm_steps=args.warm)
        row["fits"] = row["rc"] == 0 and row.get("peak_reserved_gb", 0) <= args.cap_gb
        result["rows"].append(row)
    if "story" in only:
        story = tiny_story(STORY, args.work / "story-tiny.yaml") if args.tiny else STORY
        out = args.work / "story-12gb"
        options = shlex.split(args.story_args) if args.story_args else ([] if args.tiny else STORY_OPTIONS)
        command = ["generate", str(story), "--model", str(model), "--out", str(out), "--overwrite", *options]
        row = run_lorastory("story-12gb", command, args.work, memory_gb=None if args.tiny else args.cap_gb,
                            timeout=args.timeout)
        manifest = out / "manifest.json"
        if manifest.is_file():
            record = json.loads(manifest.read_text(encoding="utf-8"))
            row.update(render_s=record.get("seconds"), speed=record.get("speed"))
        row["fits"] = row["rc"] == 0 and row.get("peak_reserved_gb", 0) <= args.cap_gb
        result["rows"].append(row)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0 if all(row["rc"] == 0 for row in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
