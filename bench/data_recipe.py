"""Benchmark the Data-Juicer-format recipe executor on the reference workflow's recipe.

Builds a seeded set of realistic JPEGs (gradient + noise, ~400 KB each, eight
shapes from 512x512 to 3000x1000), writes the Data-Juicer ``metadata.jsonl``
and the reference recipe (``image_shape_filter`` + ``image_aspect_ratio_filter``)
exactly as Data-Juicer users write it, then times, on the same files:

(a) our executor end to end, as a subprocess (interpreter start-up included):
    ``lorastory data run RECIPE`` when the CLI has that command, otherwise
    ``load_recipe`` + ``run_recipe`` through ``python -c``;
(b) a single-process Pillow loop reading every header (``Image.open(p).size``),
    the floor for any tool that must look at each file;
(c) optionally real Data-Juicer (``dj-process --config``) from its own virtualenv,
    checking that it keeps exactly the samples we keep, with the same stats;
(d) with ``--executor ray``, ``lorastory data run --executor ray`` (a local Ray with np CPUs,
    started by the command) against the local executor on the same files: the full set and a
    ``--small``-row prefix (start-up cost), byte-identical outputs checked.

Usage (from the repository root)::

    .venv/bin/python bench/data_recipe.py --json bench/out/data_recipe.json \\
        --dj-python /work/djvenv/bin/python
    .venv/bin/python bench/data_recipe.py --executor ray --json bench/out/data_recipe_ray.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _timing import time_command

REPO = Path(__file__).resolve().parent.parent
SIZES = [(512, 512), (768, 1024), (1024, 1024), (1024, 1536), (2048, 1024), (1280, 720), (3000, 1000), (900, 2000)]
JPEG_QUALITY = 90  # with NOISE_SHIFT 3 this averages ~410 KB over SIZES
NOISE_SHIFT = 3  # noise amplitude 256 >> 3 = 32 levels
CAPTION = "二次元"
MIN_SIDE, MIN_RATIO, MAX_RATIO = 1024, 0.5, 2.0
TARGET_IMG_PER_S, TARGET_VS_DJ = 2500.0, 30.0

Kept = dict[tuple[str, ...], dict[str, Any]]  # a result's samples (their image paths) -> their stats

RECIPE_TEMPLATE = """\
project_name: 'data-process'
dataset_path: '{dataset}'
np: {np}
text_keys: 'text'
image_key: 'image'
image_special_token: '<__dj__image>'
export_path: '{export}'
process:
  - image_shape_filter:
      min_width: {side}
      min_height: {side}
      any_or_all: any
  - image_aspect_ratio_filter:
      min_ratio: {min_ratio}
      max_ratio: {max_ratio}
      any_or_all: any
"""

RUN_RECIPE_CODE = (
    "import sys\n"
    "from lorastory.data.executor import run_recipe\n"
    "from lorastory.data.recipe import load_recipe\n"
    "run_recipe(load_recipe(sys.argv[1]))\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8000, help="number of images (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image content")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench/out/data_recipe",
                        help="images, metadata, recipes and outputs; images are reused for the same seed/n")
    parser.add_argument("--np", type=int, default=2, help="the recipe's np (processes)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of ours and of the header loop; best counts")
    parser.add_argument("--dj-python", type=Path, help="python of a Data-Juicer virtualenv (runs its dj-process)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="ray: also time `data run --executor ray` against the local executor")
    parser.add_argument("--small", type=int, default=100, help="rows of the start-up run with --executor ray")
    return parser.parse_args()


def image_pixels(seed: int, index: int, width: int, height: int) -> np.ndarray:
    """Colour ramp across, brightness ramp down, plus uniform noise: JPEG sizes like photos."""
    rng = np.random.default_rng([seed, index])
    room = (255 - (255 >> NOISE_SHIFT)) // 2  # two ramps plus noise never exceed 255
    left, right = rng.uniform(0, room, (2, 3))
    columns = np.linspace(left, right, width).astype(np.uint8).reshape(-1)
    rows = np.linspace(*rng.uniform(0, room, 2), height).astype(np.uint8)
    pixels = np.frombuffer(rng.bytes(height * width * 3), dtype=np.uint8).reshape(height, width * 3) >> NOISE_SHIFT
    pixels += columns
    pixels += rows[:, None]
    return pixels.reshape(height, width, 3)


def write_image(job: tuple[str, int, int]) -> int:
    """Generate and save image ``index``; return its file size."""
    path, seed, index = job
    width, height = SIZES[index % len(SIZES)]
    Image.fromarray(image_pixels(seed, index, width, height)).save(path, "JPEG", quality=JPEG_QUALITY)
    return os.path.getsize(path)


def ensure_images(image_dir: Path, n: int, seed: int) -> dict[str, Any]:
    """Generate the images unless the same set (seed, n, shapes, quality) is already there."""
    paths = [str(image_dir / f"{i:05d}.jpg") for i in range(n)]
    manifest_path = image_dir / "manifest.json"
    manifest = {"seed": seed, "n": n, "sizes": SIZES, "quality": JPEG_QUALITY, "noise_shift": NOISE_SHIFT}
    reused = manifest_path.is_file() and json.loads(manifest_path.read_text()) == json.loads(json.dumps(manifest))
    reused = reused and all(os.path.exists(p) for p in paths)
    started = time.perf_counter()
    if reused:
        sizes = [os.path.getsize(p) for p in paths]
    else:
        manifest_path.unlink(missing_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        with multiprocessing.Pool(os.cpu_count()) as pool:
            sizes = pool.map(write_image, [(p, seed, i) for i, p in enumerate(paths)], chunksize=16)
        manifest_path.write_text(json.dumps(manifest))
    return {
        "paths": paths,
        "reused": reused,
        "seconds": time.perf_counter() - started,
        "mean_kb": sum(sizes) / len(sizes) / 1024,
        "total_mb": sum(sizes) / 2**20,
    }


def write_metadata(path: Path, image_paths: list[str]) -> None:
    """Data-Juicer-format rows, as the reference workflow writes them."""
    with open(path, "w", encoding="utf-8") as handle:
        for image in image_paths:
            handle.write(json.dumps({"text": CAPTION, "image": [image]}, ensure_ascii=False) + "\n")


def write_recipe(path: Path, dataset: Path, export: Path, processes: int) -> None:
    """The reference workflow's recipe, with this run's paths and np."""
    path.write_text(
        RECIPE_TEMPLATE.format(dataset=dataset, export=export, np=processes,
                               side=MIN_SIDE, min_ratio=MIN_RATIO, max_ratio=MAX_RATIO),
        encoding="utf-8",
    )


def ours_command(recipe: Path) -> list[str]:
    """``lorastory data run`` if the CLI has it, else the library through ``python -c``."""
    cli = Path(sys.executable).with_name("lorastory")
    probe = subprocess.run([str(cli), "data", "run", "--help"], capture_output=True) if cli.exists() else None
    if probe is not None and probe.returncode == 0:
        return [str(cli), "data", "run", str(recipe)]
    return [sys.executable, "-c", RUN_RECIPE_CODE, str(recipe)]


def header_loop(paths: list[str]) -> tuple[float, float, list[tuple[int, int]]]:
    """One process, ``Image.open(path).size`` for every file: wall and CPU seconds, and the sizes."""
    cpu, started = time.process_time(), time.perf_counter()
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return time.perf_counter() - started, time.process_time() - cpu, sizes


def run_dj(dj_python: Path, recipe: Path, workdir: Path) -> tuple[float, float]:
    """Time ``dj-process`` with an empty datasets cache, so no earlier run is reused."""
    cache = workdir / "dj_hf_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache))
    command = [str(dj_python.with_name("dj-process")), "--config", str(recipe)]
    return time_command(command, workdir, workdir / "dj.log", env)


def read_results(export: Path) -> Kept:
    """Kept samples (their image paths) mapped to their stats, from a result and its stats file."""
    stats_file = export.with_name(export.stem + "_stats.jsonl")
    with open(export, encoding="utf-8") as rows, open(stats_file, encoding="utf-8") as stats:
        return {
            tuple(json.loads(row)["image"]): json.loads(stat)["__dj__stats__"]
            for row, stat in zip(rows, stats, strict=True)
        }


def expected_kept(paths: list[str], sizes: list[tuple[int, int]]) -> set[tuple[str, ...]]:
    """The samples the recipe should keep, from the header loop's sizes."""
    return {
        (path,) for path, (w, h) in zip(paths, sizes)
        if w >= MIN_SIDE and h >= MIN_SIDE and MIN_RATIO <= w / h <= MAX_RATIO
    }


def compare_kept(ours: set[tuple[str, ...]], theirs: set[tuple[str, ...]]) -> dict[str, Any]:
    """Samples kept by one side only (first 20 of each listed)."""
    only_ours, only_theirs = sorted(ours - theirs), sorted(theirs - ours)
    return {
        "same_kept": not only_ours and not only_theirs,
        "n_only_ours": len(only_ours),
        "n_only_theirs": len(only_theirs),
        "only_ours": [list(k) for k in only_ours[:20]],
        "only_theirs": [list(k) for k in only_theirs[:20]],
    }


def close(a: Any, b: Any) -> bool:
    """Equal, except floats may differ by Data-Juicer's rounding to 10 decimals (see bench/RESULTS.md)."""
    if isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-10)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def compare_stats(ours: Kept, theirs: Kept) -> dict[str, Any]:
    """Samples both sides kept whose stats differ: exactly, and beyond float rounding (first 10 listed)."""
    common = sorted(ours.keys() & theirs.keys())
    inexact = [key for key in common if ours[key] != theirs[key]]
    differ = [key for key in inexact if not close(ours[key], theirs[key])]
    return {
        "n_stats_inexact": len(inexact),
        "n_stats_differ": len(differ),
        "stats_inexact": [{"images": list(k), "ours": ours[k], "theirs": theirs[k]} for k in inexact[:3]],
        "stats_differ": [{"images": list(k), "ours": ours[k], "theirs": theirs[k]} for k in differ[:10]],
    }


def device_info() -> dict[str, Any]:
    """Usable cores and CPU model, for the record."""
    cpu = platform.processor()
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "python": platform.python_version()}


def bench_ours(args: argparse.Namespace, workdir: Path, dataset: Path) -> tuple[dict[str, Any], Kept]:
    """Time our executor ``--repeat`` times; return its numbers and its kept samples with stats."""
    export = workdir / "output" / "result.jsonl"
    recipe = workdir / "recipe.yaml"
    write_recipe(recipe, dataset, export, args.np)
    command = ours_command(recipe)
    runs, cpus = zip(*(time_command(command, workdir, workdir / "ours.log") for _ in range(args.repeat)))
    kept = read_results(export)
    numbers = {"command": command, "runs_s": list(runs), "cpu_s": list(cpus), "best_s": min(runs),
               "img_per_s": args.n / min(runs), "kept": len(kept), "export": str(export)}
    return numbers, kept


def bench_dj(args: argparse.Namespace, workdir: Path, dataset: Path, ours_kept: Kept) -> dict[str, Any]:
    """Time Data-Juicer once and compare what it keeps (and its stats) with ours."""
    export = workdir / "output_dj" / "result.jsonl"
    recipe = workdir / "recipe_dj.yaml"
    write_recipe(recipe, dataset, export, args.np)
    seconds, cpu = run_dj(args.dj_python, recipe, workdir)
    kept = read_results(export)
    ours_export = workdir / "output" / "result.jsonl"
    return {
        "seconds": seconds, "cpu_s": cpu, "img_per_s": args.n / seconds, "kept": len(kept),
        "vs_ours": {
            **compare_kept(set(ours_kept), set(kept)),
            **compare_stats(ours_kept, kept),
            "result_files_identical": ours_export.read_bytes() == export.read_bytes(),
        },
    }


def bench_ray(args: argparse.Namespace, workdir: Path, paths: list[str]) -> dict[str, Any]:
    """Local vs Ray executor, on all rows and on a ``--small`` prefix; outputs must be identical."""
    numbers: dict[str, Any] = {}
    for label, rows in (("small", paths[: args.small]), ("full", paths)):
        dataset = workdir / f"metadata_{label}.jsonl"
        write_metadata(dataset, rows)
        files = {}
        for executor in ("local", "ray"):
            export = workdir / f"output_{executor}_{label}" / "result.jsonl"
            recipe = workdir / f"recipe_{executor}_{label}.yaml"
            write_recipe(recipe, dataset, export, args.np)
            command = ours_command(recipe) + (["--executor", "ray"] if executor == "ray" else [])
            log = workdir / f"{executor}_{label}.log"
            runs = [time_command(command, workdir, log) for _ in range(args.repeat)]
            best = min(runs)
            numbers[f"{executor}_{label}"] = {"rows": len(rows), "runs_s": [r[0] for r in runs],
                                              "cpu_s": [r[1] for r in runs], "best_s": best[0]}
            files[executor] = [export.read_bytes(), export.with_name("result_stats.jsonl").read_bytes()]
        numbers[f"identical_{label}"] = files["local"] == files["ray"]
    n_small, n_full = min(args.small, len(paths)), len(paths)
    for executor in ("local", "ray"):
        small, full = numbers[f"{executor}_small"]["best_s"], numbers[f"{executor}_full"]["best_s"]
        numbers[f"{executor}_us_per_image"] = (full - small) / max(1, n_full - n_small) * 1e6
    numbers["startup_overhead_s"] = numbers["ray_small"]["best_s"] - numbers["local_small"]["best_s"]
    numbers["full_ratio"] = numbers["ray_full"]["best_s"] / numbers["local_full"]["best_s"]
    return numbers


def report_ray(n: int, ray: dict[str, Any]) -> None:
    """The local vs Ray table."""
    print(f"\n{'executor (best of runs)':<28} {'rows':>6} {'seconds':>9} {'img/s':>9}")
    for key in ("local_small", "ray_small", "local_full", "ray_full"):
        row = ray[key]
        print(f"{key:<28} {row['rows']:>6} {row['best_s']:>9.2f} {row['rows'] / row['best_s']:>9.0f}")
    print(f"ray start-up overhead: {ray['startup_overhead_s']:.2f} s; marginal cost: local "
          f"{ray['local_us_per_image']:.0f} us/image, ray {ray['ray_us_per_image']:.0f} us/image; "
          f"ray/local on {n}: {ray['full_ratio']:.2f}x; identical outputs: small {ray['identical_small']}, "
          f"full {ray['identical_full']}")


def report(result: dict[str, Any]) -> None:
    """Print the table, the ratios, the agreement checks and the verdict."""
    n, ours, header, dj = result["n"], result["ours"], result["header_loop"], result.get("dj")
    best = ours["runs_s"].index(ours["best_s"])
    rows = [
        (f"ours end to end (np={result['np']}, best of {len(ours['runs_s'])})", ours["best_s"], ours["cpu_s"][best]),
        (f"Pillow header loop (1 process, best of {len(header['runs_s'])})", header["best_s"], header["cpu_s"]),
    ]
    if dj is not None:
        rows.append((f"Data-Juicer dj-process (np={result['np']})", dj["seconds"], dj["cpu_s"]))
    print(f"\n{'what':<44} {'seconds':>9} {'CPU s':>9} {'img/s':>9}")
    for name, seconds, cpu in rows:
        print(f"{name:<44} {seconds:>9.2f} {cpu:>9.2f} {n / seconds:>9.0f}")
    runs = ", ".join(f"{s:.2f} s ({c:.2f} s CPU)" for s, c in zip(ours["runs_s"], ours["cpu_s"]))
    print(f"ours runs: {runs}; command: {' '.join(ours['command'][:3])} ...")
    print("speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup"].items()))
    checks = {"ours vs expected": result["ours_vs_expected"]}
    if dj is not None:
        checks["ours vs Data-Juicer"] = dj["vs_ours"]
    for name, check in checks.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in check.items() if not isinstance(v, list)))
    dj_kept = f", Data-Juicer {dj['kept']}" if dj else ""
    print(f"kept: ours {ours['kept']}, expected {result['expected_kept']}{dj_kept}")
    print(f"target (>= {TARGET_IMG_PER_S:.0f} img/s and >= {TARGET_VS_DJ:.0f}x Data-Juicer): "
          f"{'met' if result['meets_target'] else 'MISSED'}" + ("" if dj else " (Data-Juicer not run)"))


def main() -> None:
    args = parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    images = ensure_images(workdir / "images", args.n, args.seed)
    paths = images.pop("paths")
    print(f"images: {args.n} x {images['mean_kb']:.0f} KB mean ({images['total_mb']:.0f} MB), "
          f"{'reused' if images['reused'] else 'generated'} in {images['seconds']:.1f} s")
    dataset = workdir / "metadata.jsonl"
    write_metadata(dataset, paths)
    load = os.getloadavg()  # other work on the machine skews every number below

    header_runs = [header_loop(paths) for _ in range(args.repeat)]
    header_s, header_cpu, sizes = min(header_runs)
    expected = expected_kept(paths, sizes)
    ours, ours_kept = bench_ours(args, workdir, dataset)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": device_info(), "argv": sys.argv, "loadavg_at_start": load,
        "n": args.n, "seed": args.seed, "np": args.np, "images": images, "ours": ours,
        "header_loop": {"runs_s": [run[0] for run in header_runs], "best_s": header_s, "cpu_s": header_cpu,
                        "img_per_s": args.n / header_s},
        "expected_kept": len(expected),
        "ours_vs_expected": compare_kept(set(ours_kept), expected),
        "speedup": {"ours_vs_header_loop": header_s / ours["best_s"]},
    }
    if args.dj_python is not None:
        result["dj"] = bench_dj(args, workdir, dataset, ours_kept)
        result["speedup"]["ours_vs_dj"] = result["dj"]["seconds"] / ours["best_s"]
    result["meets_target"] = (ours["img_per_s"] >= TARGET_IMG_PER_S
                              and result["speedup"].get("ours_vs_dj", TARGET_VS_DJ) >= TARGET_VS_DJ)
    if args.executor == "ray":
        result["ray"] = bench_ray(args, workdir, paths)
    report(result)
    if "ray" in result:
        report_ray(args.n, result["ray"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
