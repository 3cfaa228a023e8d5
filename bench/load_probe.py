"""Where a model load's seconds go: disk (page cache) to GPU, by the ways a loader can copy.

`lorastory generate` loaded the 16.6 GB Kolors folder onto an H200 in 6.5-8.7 s (about 2 GB/s,
bench/RESULTS.md 2026-12-02), from files already in the page cache. This probe times, for each weight
file of a diffusers folder and each way, the seconds and GB/s, one process per way (the page cache stays
warm; the GPU allocator does not carry over):

- ``read``: the file read into ordinary memory, no GPU (the floor set by the page cache);
- ``safetensors-cuda``: ``safetensors.torch.load_file(device="cuda")``, what the libraries do per file;
- ``pinned``: the file read into one page-locked buffer, then copied to the GPU in one transfer;
- ``pipeline``: lorastory's ``load_pipeline(folder, device="cuda")``, the whole folder as `generate` loads it;
- ``pipeline-parallel``: the same with ``HF_ENABLE_PARALLEL_LOADING=true`` (diffusers' and transformers'
  threaded loading of sharded files).

    PYTHONPATH=/tmp/site:src python bench/load_probe.py --model /tmp/lsb/kolors --json $OUT/load_probe.json
    .venv/bin/python bench/load_probe.py --model src/lorastory/models/assets/toy/kolors --cpu   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WAYS = ("read", "safetensors-cuda", "pinned", "pipeline", "pipeline-parallel")


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.safetensors"))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_way(way: str, folder: Path, device: str) -> dict[str, Any]:
    """One way, in this process: seconds and GB/s per file (per folder for the pipeline ways)."""
    import torch

    rows = []
    if way.startswith("pipeline"):
        from lorastory.models.registry import detect_family, load_pipeline

        detect_family(folder).pipeline_type()  # the imports before the clock: they are the start-up's, not the load's
        started = time.perf_counter()
        pipe = load_pipeline(str(folder), device=device if device == "cuda" else None)
        _sync(device)
        size = sum(f.stat().st_size for f in weight_files(folder))
        rows.append({"file": str(folder), "gb": size / 1e9, "s": time.perf_counter() - started})
        del pipe
    else:
        for file in weight_files(folder):
            size = file.stat().st_size
            started = time.perf_counter()
            if way == "read":
                file.read_bytes()
            elif way == "safetensors-cuda":
                from safetensors.torch import load_file

                tensors = load_file(str(file), device=device)
                _sync(device)
                del tensors
            elif way == "pinned":
                buffer = torch.empty(size, dtype=torch.uint8, pin_memory=device == "cuda")
                with open(file, "rb", buffering=0) as handle:
                    handle.readinto(memoryview(buffer.numpy()))
                copied = buffer.to(device, non_blocking=True)
                _sync(device)
                del copied, buffer
            rows.append({"file": str(file.relative_to(folder)), "gb": size / 1e9, "s": time.perf_counter() - started})
    for row in rows:
        row["gb_per_s"] = round(row["gb"] / row["s"], 2) if row["s"] else None
        row["s"] = round(row["s"], 3)
        row["gb"] = round(row["gb"], 3)
    return {"way": way, "rows": rows, "total_s": round(sum(r["s"] for r in rows), 3)}


def run_child(way: str, folder: Path, device: str, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    if way == "pipeline-parallel":
        env["HF_ENABLE_PARALLEL_LOADING"] = "true"
    command = [sys.executable, __file__, "--model", str(folder), "--child", way] + (["--cpu"] if device == "cpu" else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"way": way, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"way": way, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers folder (bench/e2e.py --only build)")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--cpu", action="store_true", help="copy to the CPU instead (a smoke test of the script)")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if args.child:
        print(json.dumps(time_way(args.child, args.model, device)), flush=True)
        return 0
    results = [run_child(way, args.model, device, args.timeout) for way in args.ways.split(",")]
    for result in results:
        if "error" in result:
            print(f"{result['way']:<18} error: {result['error']}")
            continue
        gb = sum(r["gb"] for r in result["rows"])
        print(f"{result['way']:<18} {result['total_s']:7.2f} s  {gb / result['total_s']:6.2f} GB/s  ({gb:.2f} GB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "device": device, "results": results},
                                              indent=1), encoding="utf-8")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
