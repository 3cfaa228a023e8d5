"""What a story run spends after its pictures exist: the 8 panels written as PNGs with parameters, and the storyboard.

Builds 8 panels (default 1024x1024) of each kind of content, since what a PNG costs depends on it:

* ``noise``: uniform random pixels, what the real-size Kolors with random weights draws (the H200 end-to-end run);
* ``toyworld``: the toy world's pictures at panel size (flat, outlined and watercolour cartoons, what the toy model learned);
* ``smooth``: multi-scale value noise with a little grain, a stand-in for a photograph.

and writes them, with the parameters and the storyboard (title and captions) of ``examples/story_kolors_anime.yaml``,
three ways in the same run, interleaved, ``--repeat`` times (medians):

* ``old``: what ``lorastory generate`` did at the start of this work (commit faf5a1b), reproduced: each panel
  Pillow-encoded at zlib level 1 and written atomically, one after another, then the storyboard made from the
  pictures in memory and Pillow-encoded the same way;
* ``new-1``: today's code (Pillow, the panels and the storyboard as writes on a ``PictureWriter``) on one thread;
* ``new``: the same on ``--workers`` threads (default: the cores this process may use, at most 16), as a run does:
  Pillow releases the GIL while it compresses, so the files encode side by side.

Checks that every way wrote the same pixels and the same text chunks, and prints wall and CPU seconds, the ratio
to ``old`` and the file sizes (``--json``: one JSON object). ``--levels`` adds what one panel costs at zlib levels
0, 1, 2, 3 and 6 with Pillow, the measurement behind ``PNG_COMPRESS_LEVEL``.

    PYTHONPATH=src python bench/write_outputs.py [--repeat 5] [--contents noise,toyworld,smooth] [--levels] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from lorastory.fileio import atomic_open  # noqa: E402
from lorastory.generate.grid import make_storyboard, save_storyboard  # noqa: E402
from lorastory.generate.pngmeta import PNG_COMPRESS_LEVEL, GenerationParams, png_info, save_png_with_info  # noqa: E402
from lorastory.generate.story import PanelJob  # noqa: E402
from lorastory.generate.story_file import load_story, resolve_panels  # noqa: E402
from lorastory.generate.writer import PictureWriter, default_workers  # noqa: E402
from lorastory.toyworld import STYLES, render, sample_scene  # noqa: E402

STORY = ROOT / "examples" / "story_kolors_anime.yaml"
CONTENTS = ("noise", "toyworld", "smooth")


# --------------------------------------------------------------------------- pictures


def noise_panels(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def toyworld_panels(count: int, size: int) -> list[Image.Image]:
    styles = [s for s in ("flat", "outlined", "watercolor") if s in STYLES] or list(STYLES)
    return [render(sample_scene(random.Random(i)), styles[i % len(styles)], size, seed=i) for i in range(count)]


def smooth_panels(count: int, size: int) -> list[Image.Image]:
    panels = []
    for index in range(count):
        rng = np.random.default_rng(100 + index)
        total = np.zeros((size, size, 3), np.float32)
        for cells, amplitude in [(4, 90.0), (16, 50.0), (64, 25.0), (256, 10.0)]:
            coarse = rng.random((cells, cells, 3), dtype=np.float32)
            total += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., c], "F").resize(
                (size, size), Image.Resampling.BICUBIC)) for c in range(3)], -1)
        total += rng.normal(0.0, 2.0, total.shape).astype(np.float32)
        panels.append(Image.fromarray(np.clip(total, 0, 255).astype(np.uint8)))
    return panels


MAKERS: dict[str, Callable[[int, int], list[Image.Image]]] = {
    "noise": noise_panels, "toyworld": toyworld_panels, "smooth": smooth_panels}


# --------------------------------------------------------------------------- the three ways


def params_of(job: PanelJob) -> GenerationParams:
    return GenerationParams(prompt=job.prompt, negative_prompt=job.negative, steps=job.steps, sampler=job.sampler,
                            cfg_scale=job.cfg, seed=job.seed, width=job.width, height=job.height,
                            model="Kolors-diffusers")


def board_options(title: str, jobs: list[PanelJob]) -> dict[str, Any]:
    return {"cols": 2, "title": title or None, "captions": [job.caption for job in jobs]}


def write_old(pictures: list[Image.Image], jobs: list[PanelJob], title: str, out: Path) -> None:
    """``render_panels`` + ``save_storyboard`` as of faf5a1b: Pillow at level 1, one file after another."""
    for job, image in zip(jobs, pictures):
        with atomic_open(out / job.file_name, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=png_info(params_of(job)), compress_level=PNG_COMPRESS_LEVEL)
    board = make_storyboard(pictures, **board_options(title, jobs))
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    with atomic_open(out / "storyboard.png", "wb") as handle:
        board.save(handle, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)


def write_new(pictures: list[Image.Image], jobs: list[PanelJob], title: str, out: Path, workers: int) -> None:
    """What ``_render_story`` does now: panels on the writer's threads, the storyboard beside them."""
    with PictureWriter(workers) as writer:
        for job, image in zip(jobs, pictures):
            writer.submit(save_png_with_info, image, out / job.file_name, png_info(params_of(job)))
        writer.submit(save_storyboard, pictures, out / "storyboard.png", compress_level=PNG_COMPRESS_LEVEL,
                      **board_options(title, jobs))


def timed(write: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    write()
    return time.perf_counter() - wall, time.process_time() - cpu


def same_files(first: Path, second: Path) -> dict[str, bool]:
    """Whether two folders' PNGs have the same pixels and the same text chunks, and whether they are byte-identical."""
    pixels = chunks = identical = True
    for path in sorted(first.glob("*.png")):
        with Image.open(path) as a, Image.open(second / path.name) as b:
            pixels &= a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
            chunks &= a.text == b.text
        identical &= path.read_bytes() == (second / path.name).read_bytes()
    return {"same_pixels": bool(pixels), "same_text_chunks": bool(chunks), "byte_identical": bool(identical)}


def sizes(folder: Path) -> dict[str, int]:
    panels = sum(p.stat().st_size for p in folder.glob("panel-*.png"))
    return {"panels_bytes": panels, "storyboard_bytes": (folder / "storyboard.png").stat().st_size}


def measure_content(name: str, args: argparse.Namespace, jobs: list[PanelJob], title: str, tmp: Path) -> dict[str, Any]:
    pictures = MAKERS[name](len(jobs), args.size)
    ways: dict[str, Callable[[Path], None]] = {
        "old": lambda out: write_old(pictures, jobs, title, out),
        "new-1": lambda out: write_new(pictures, jobs, title, out, 1),
        "new": lambda out: write_new(pictures, jobs, title, out, args.workers),
    }
    times: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for repeat in range(args.repeat):
        for way, write in ways.items():
            out = tmp / f"{name}-{way}-{repeat}"
            out.mkdir()
            times[way].append(timed(lambda: write(out)))
    board_s = statistics.median(timed(lambda: make_storyboard(pictures, **board_options(title, jobs)))[0]
                                for _ in range(args.repeat))
    last = args.repeat - 1
    old_wall = statistics.median(t[0] for t in times["old"])
    row: dict[str, Any] = {"content": name, "make_storyboard_s": round(board_s, 3)}
    for way in ways:
        wall = statistics.median(t[0] for t in times[way])
        row[way] = {"wall_s": round(wall, 3), "cpu_s": round(statistics.median(t[1] for t in times[way]), 3),
                    "speedup": round(old_wall / wall, 2), **sizes(tmp / f"{name}-{way}-{last}")}
        if way != "old":
            row[way].update(same_files(tmp / f"{name}-old-{last}", tmp / f"{name}-{way}-{last}"))
    return row


def level_table(name: str, size: int, repeat: int) -> list[dict[str, Any]]:
    """One panel at zlib levels 0-3 and 6: Pillow's seconds (one thread) and bytes."""
    image = MAKERS[name](1, size)[0]
    rows = []
    for level in (0, 1, 2, 3, 6):
        def pillow(level: int = level) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=level)
            return buffer.getvalue()

        row: dict[str, Any] = {"content": name, "level": level,
                               "pillow_s": round(statistics.median(timed(pillow)[0] for _ in range(repeat)), 3),
                               "pillow_bytes": len(pillow())}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contents", default=",".join(CONTENTS), help=f"comma-separated, of {', '.join(CONTENTS)}")
    parser.add_argument("--size", type=int, default=1024, help="panel side in pixels")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--levels", action="store_true", help="also time one panel at zlib levels 0-3 and 6")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    contents = [c.strip() for c in args.contents.split(",") if c.strip()]
    if unknown := sorted(set(contents) - set(MAKERS)):
        parser.error(f"unknown content {', '.join(unknown)}; choose from {', '.join(CONTENTS)}")
    story = load_story(STORY)
    jobs = [dataclasses.replace(job, width=args.size, height=args.size) for job in resolve_panels(story)]
    result: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "workers": args.workers, "panels": len(jobs), "size": args.size, "repeat": args.repeat,
                              "compress_level": PNG_COMPRESS_LEVEL, "rows": [], "levels": []}
    with tempfile.TemporaryDirectory(prefix="bench-write-") as tmp:
        for name in contents:
            row = measure_content(name, args, jobs, story.title, Path(tmp))
            result["rows"].append(row)
            if not args.json:
                print(f"{name:9s} old {row['old']['wall_s']:.3f} s | new-1 {row['new-1']['wall_s']:.3f} s "
                      f"({row['new-1']['speedup']}x) | new x{args.workers} {row['new']['wall_s']:.3f} s "
                      f"({row['new']['speedup']}x) | cpu old {row['old']['cpu_s']:.3f} new {row['new']['cpu_s']:.3f} | "
                      f"MB old {(row['old']['panels_bytes'] + row['old']['storyboard_bytes']) / 1e6:.2f} "
                      f"new {(row['new']['panels_bytes'] + row['new']['storyboard_bytes']) / 1e6:.2f} | "
                      f"same pixels {row['new']['same_pixels']}, chunks {row['new']['same_text_chunks']} | "
                      f"make_storyboard {row['make_storyboard_s']:.3f} s", flush=True)
            if args.levels:
                result["levels"] += level_table(name, args.size, args.repeat)
    if args.json:
        print(json.dumps(result, indent=1))
    elif result["levels"]:
        for row in result["levels"]:
            print(f"{row['content']:9s} level {row['level']}: Pillow {row['pillow_s']:.3f} s {row['pillow_bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
