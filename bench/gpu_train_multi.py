"""Multi-GPU benchmark: `lorastory train` data parallel on 1, 2 (4, 8) GPUs, Kolors architecture at 1024².

One call measures, for 1 GPU and then for each larger count in ``--gpus``:

- training throughput (img/s) in the steady state: LoRA rank 16 on to_q/k/v/out.0, cached inputs,
  the trainer's fast path (bf16 compute, fp32 LoRA weights, compiled transformer blocks), the same
  batch per GPU, so the global batch grows with the GPUs; scaling against the 1-GPU run;
- the time to build the cache (latents + caption embeddings), sharded over the processes;
- the peak GPU memory of every process.

Every run is the real trainer (``lorastory.train.trainer.train``) on real files: a Kolors diffusers
folder with the real UNet (2.58 B parameters, seeded random weights, bf16) and the SDXL VAE, and a
ChatGLM text encoder of ChatGLM3-6B's width with 2 of its 28 layers (the UNet needs its 4096-wide
embeddings; captions are few and encoded once, so the 1024² VAE encodes dominate the cache time),
with ``--images`` seeded 1024² JPEGs. The 1-GPU run is a plain process, as ``lorastory train`` runs;
the others go through ``accelerate launch`` as ``lorastory train --gpus N`` does
(``lorastory.train.launch.launch_command``), each process running this script's ``--worker`` mode.
Throughput is timed on the main process between optimizer steps (the trainer reads the loss every
step, so each step ends with the GPU done), over the steps after ``--warmup``.

    PYTHONPATH=src python bench/gpu_train_multi.py --gpus 1,2 --json $OUT/train_multi.json
    PYTHONPATH=src python bench/gpu_train_multi.py --tiny --cpu --gpus 1,2     # CPU smoke test (gloo)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _kolors_arch import Recorder, build_unet, build_vae, environment  # noqa: E402

from lorastory.fileio import atomic_write_json  # noqa: E402
from lorastory.train.config import TrainConfig  # noqa: E402
from lorastory.train.launch import launch_command, use_cpu  # noqa: E402

# NVLink multicast stays off in every process this starts (the device machines require it).
for _name in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
    os.environ.setdefault(_name, "0" if _name == "NCCL_NVLS_ENABLE" else "1")

CAPTIONS = ["二次元 少女 紫色 长发", "anime girl long hair on a stage", "水彩 天空 草地", "pixel comic cat and dog",
            "黑色 礼服 舞台 歌星", "a red house under a blue sky", "日系 动漫 流星 许愿", "watercolor tree at night"]


# --- setup: model folder and training images ---------------------------------------------------


def build_model(folder: Path, tiny: bool) -> Path:
    """A Kolors diffusers folder: the tiny model, or the real UNet/VAE and a 2-layer ChatGLM3-width encoder."""
    from lorastory.models.tiny import build_tiny_model

    if (folder / "model_index.json").is_file():
        return folder
    build_tiny_model("kolors", folder)
    if tiny:
        return folder
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = {"unet": build_unet(device, torch.bfloat16), "vae": build_vae(device, torch.float32),
             "text_encoder": _text_encoder(folder / "text_encoder", device)}
    for name, part in parts.items():
        shutil.rmtree(folder / name)
        part.save_pretrained(folder / name, safe_serialization=True)
    del parts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def _text_encoder(tiny_folder: Path, device: str) -> Any:
    """ChatGLM3-6B's layer shapes (hidden 4096, 32 heads, 2 KV groups, FFN 13696) with 2 of its 28 layers, bf16."""
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    from lorastory.models.tiny import _init_chatglm_  # the tiny model's initialisation (no NaN outputs)

    tiny = json.loads((tiny_folder / "config.json").read_text())
    config = ChatGLMConfig(
        num_layers=2, padded_vocab_size=tiny["padded_vocab_size"], hidden_size=4096, ffn_hidden_size=13696,
        kv_channels=128, num_attention_heads=32, seq_length=256, multi_query_attention=True,
        multi_query_group_num=2, original_rope=True, torch_dtype="bfloat16",
    )
    torch.manual_seed(2)
    with torch.device(device):
        encoder = ChatGLMModel(config, empty_init=False)
    _init_chatglm_(encoder)
    return encoder.to(torch.bfloat16).eval()


def build_images(folder: Path, count: int, size: int) -> Path:
    """``count`` seeded ``size``² JPEGs (a colour gradient plus noise) and their metadata.csv."""
    import numpy as np
    from PIL import Image

    if (folder / "metadata.csv").is_file():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rows = []
    for index in range(count):
        base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                         np.full((size, size), 40.0 * (index % 6), np.float32)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{index:04d}.jpg", quality=90)
        rows.append((f"images/{index:04d}.jpg", CAPTIONS[index % len(CAPTIONS)]))
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows(rows)
    return folder


# --- one configuration: N processes --------------------------------------------------------------


def run_config(args: argparse.Namespace, model: Path, data: Path, gpus: int, timeout: float) -> dict[str, Any]:
    """Train with ``gpus`` processes in a fresh run folder and cache; return the merged per-process records."""
    run_dir = Path(args.work) / f"gpus-{gpus}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = TrainConfig(
        model=str(model), data=str(data), out=str(run_dir / "out"), cache_dir=str(run_dir / "cache"),
        resolution=args.resolution, rank=16, alpha=4.0, batch_size=args.batch, max_steps=args.warmup + args.steps,
        lr=1e-4, seed=0, precision="no" if args.cpu else "bf16", gradient_checkpointing=args.checkpointing,
        compile="off" if args.no_compile else args.compile,
    )
    config.save_yaml(run_dir / "train.yaml")
    target = [str(Path(__file__).resolve()), "--worker", str(run_dir)]
    command = [sys.executable, *target] if gpus == 1 else launch_command(gpus, target)
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "1"} if args.cpu else {})}
    started = time.perf_counter()
    code, tail = _run(command, env, timeout)
    wall = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank-*.json"))]
    main = next((r for r in records if r["rank"] == 0), None)
    if code != 0 or main is None or len(records) != gpus:
        return {"gpus": gpus, "error": f"exit code {code}, {len(records)} of {gpus} process records", "tail": tail}
    times = main["step_end_s"]
    measured = len(times) - args.warmup
    seconds = times[-1] - times[args.warmup - 1]
    return {
        "gpus": gpus,
        "global_batch": args.batch * gpus,
        "img_s": round(measured * args.batch * gpus / seconds, 2),
        "ms_per_step": round(1000 * seconds / measured, 1),
        "measured_steps": measured,
        "cache_s": round(main["cache_s"], 1),
        "cache_images": args.images,
        "to_first_step_s": round(times[0], 1),
        "warmup_steps_s": round(times[args.warmup - 1] - times[0], 1),
        "wall_s": round(wall, 1),
        "peak_allocated_gb": [r["peak_allocated_gb"] for r in records],
        "peak_reserved_gb": [r["peak_reserved_gb"] for r in records],
        "devices": sorted({r["device"] for r in records}),
        "losses": main["losses"],
        "log_tail": tail[-1500:],
    }


def _run(command: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run ``command`` in its own process group (the launcher's children included); kill the group on timeout."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output[-6000:]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, f"timed out after {timeout:.0f} s\n{output[-6000:]}"


def worker(run_dir: Path) -> int:
    """One training process: run the trainer, write this process's record."""
    from lorastory.train.trainer import train

    config = TrainConfig.from_yaml(run_dir / "train.yaml")
    started = time.perf_counter()
    step_ends: list[float] = []
    result = train(config, on_progress=lambda _: step_ends.append(time.perf_counter() - started),
                   say=lambda message: print(message, flush=True))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and not use_cpu()
    record: dict[str, Any] = {
        "rank": rank,
        "processes": result.processes,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else 0.0,
    }
    if result.main_process:
        record.update(step_end_s=step_ends, cache_s=result.cache_seconds, steps=result.steps,
                      losses=[round(x, 5) for x in result.losses])
    atomic_write_json(run_dir / f"rank-{rank}.json", record)
    return 0


# --- report --------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r["img_s"] for r in rows if r.get("gpus") == 1 and "img_s" in r), None)
    lines = ["| GPUs | global batch | img/s | scaling vs 1 GPU | per GPU img/s | cache build s (images) "
             "| peak GB per GPU (allocated / reserved) | first step s | warm-up steps s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        if "img_s" not in r:
            lines.append(f"| {r['gpus']} | | {r.get('error') or r.get('skipped')} | | | | | | |")
            continue
        scaling = f"{r['img_s'] / base:.2f}x" if base else "-"
        memory = ", ".join(f"{a} / {b}" for a, b in zip(r["peak_allocated_gb"], r["peak_reserved_gb"]))
        lines.append(f"| {r['gpus']} | {r['global_batch']} | {r['img_s']} | {scaling} | {r['img_s'] / r['gpus']:.2f} "
                     f"| {r['cache_s']} ({r['cache_images']}) | {memory} | {r['to_first_step_s']} | {r['warmup_steps_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="1,2", help="comma-separated process counts, e.g. 1,2 or 1,2,4,8")
    parser.add_argument("--batch", type=int, default=None, help="batch per GPU (default 8; 2 with --tiny)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 128; 16 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not timed (compilation; default 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 16; 3 with --tiny)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (the library default)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile", default="blocks", choices=["auto", "off", "blocks", "cudagraphs"],
                        help="the trainer's compile setting (blocks: what the earlier runs used)")
    parser.add_argument("--tiny", action="store_true", help="the tiny Kolors model at 64² (smoke test)")
    parser.add_argument("--cpu", action="store_true", help="processes on the CPU (gloo), ACCELERATE_USE_CPU=1")
    parser.add_argument("--work", default="/tmp/lorastory-bench-multi", help="model, data and run folders")
    parser.add_argument("--json", default=str(Path(os.environ["OUT"]) / "train_multi.json") if os.environ.get("OUT") else None)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole call; later runs are skipped")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(Path(args.worker))
    args.batch = args.batch or (2 if args.tiny else 8)
    args.images = args.images or (16 if args.tiny else 128)
    args.warmup = max(1, args.warmup or (1 if args.tiny else 4))
    args.steps = args.steps or (3 if args.tiny else 16)
    args.resolution = 64 if args.tiny else 1024

    started = time.perf_counter()
    rec = Recorder(args.json, started)
    rec.set("environment", environment())
    rec.set("settings", {k: v for k, v in vars(args).items() if k != "worker"})
    work = Path(args.work)
    model = build_model(work / ("model-tiny" if args.tiny else "model"), args.tiny)
    data = build_images(work / f"data-{args.images}-{args.resolution}", args.images, args.resolution)
    rec.set("setup_s", round(rec.elapsed(), 1))
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for gpus in sorted({int(n) for n in args.gpus.split(",")}):
        left = args.budget - rec.elapsed()
        if gpus > available and not args.cpu:
            rec.row(f"{gpus} GPU(s)", gpus=gpus, skipped=f"this machine has {available} GPU(s)")
        elif left < 30:
            rec.row(f"{gpus} GPU(s)", gpus=gpus, skipped="time budget")
        else:
            rec.row(f"{gpus} GPU(s)", **run_config(args, model, data, gpus, timeout=left))
    rows = rec.data["rows"]
    print("\n" + table(rows))
    print(f"\nelapsed {rec.elapsed():.0f} s")
    return 0 if all("img_s" in r or "skipped" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
