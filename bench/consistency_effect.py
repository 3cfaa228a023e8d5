"""What consistency does to a story: the same story rendered with consistency none / attention / reference / both.

For each mode the story is rendered (``lorastory.generate.story.generate_story``, timed without model loading)
into ``OUT/<mode>/`` and scored as ``lorastory eval`` scores a run (``lorastory.eval.report.score_images``):
character consistency (mean pairwise CLIP image-embedding cosine of the panels, and of their centre crops: the
subject variant) and each panel's CLIP-T against its prompt. Written to ``OUT``:

* ``side_by_side.png``: one row of panels per mode, each panel captioned with its mode and CLIP-T;
* ``consistency_effect.json`` and ``consistency_effect.md``: per mode, the two consistency scores and their gain
  over ``none``, mean CLIP-T, the largest per-panel CLIP-T drop against ``none`` (the text-score margin),
  seconds per story and the extra seconds over ``none``.

The story's own ``consistency`` settings (strength, blocks, sample rate, steps, reference) are kept; only the
mode changes. A mode that cannot run (e.g. no IP-Adapter reachable offline) is recorded with its error.

    PYTHONPATH=src python bench/consistency_effect.py --model DIR --story examples/story_kolors_consistent.yaml \\
        --out bench/out/consistency [--lora FILE] [--clip DIR] [--ip-adapter DIR] [--steps 20 --size 256]
    PYTHONPATH=src python bench/consistency_effect.py --tiny --out /tmp/ce   # smoke test on tiny random models
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from lorastory.errors import LorastoryError  # noqa: E402
from lorastory.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from lorastory.generate.consistency_settings import MODES  # noqa: E402

RESULT = "consistency_effect"


def story_for(story: Any, mode: str, args: argparse.Namespace) -> Any:
    """The story with ``mode`` (and the command line's size, steps and IP-Adapter) applied."""
    from lorastory.generate.story_file import with_consistency

    changes: dict[str, Any] = {"mode": mode}
    if args.ip_adapter:
        changes["ip_adapter"] = args.ip_adapter
    story = with_consistency(story, **changes)
    defaults = {k: v for k, v in (("steps", args.steps), ("width", args.size), ("height", args.size)) if v}
    if defaults:
        story = story.model_copy(update={"defaults": story.defaults.model_copy(update=defaults)})
    if args.panels:
        story = story.model_copy(update={"panels": story.panels[: args.panels]})
    return story


def run_mode(story: Any, mode: str, args: argparse.Namespace, scorers: Any) -> dict[str, Any]:
    from lorastory.eval.report import load_panel_images, read_run, score_images
    from lorastory.generate.story import generate_story

    out = Path(args.out) / mode
    started = time.perf_counter()
    result = generate_story(story, args.model, out, lora=args.lora, lora_scale=args.lora_scale, device=args.device)
    wall = time.perf_counter() - started
    run = read_run(out)
    scores = score_images(scorers, load_panel_images(run), [p.prompt for p in run.panels])
    return {"seconds": round(result.seconds, 3), "wall_seconds_with_loading": round(wall, 3),
            "summary": scores["summary"], "clip_t": [p["clip_t"] for p in scores["panels"]],
            "files": [str(p) for p in result.panels], "notes": scores["notes"]}


def compare(results: dict[str, dict[str, Any]]) -> None:
    """Gains and margins against ``none``, in place."""
    base = results.get("none")
    if not base or "summary" not in base:
        return
    for entry in results.values():
        if "summary" not in entry:
            continue
        summary, reference = entry["summary"], base["summary"]
        for key in ("consistency", "subject_consistency", "clip_t_mean"):
            if summary.get(key) is not None and reference.get(key) is not None:
                entry[f"{key}_gain"] = round(summary[key] - reference[key], 6)
        drops = [b - a for a, b in zip(entry["clip_t"], base["clip_t"]) if a is not None and b is not None]
        entry["clip_t_worst_panel_drop"] = round(max(drops), 4) if drops else None
        entry["extra_seconds"] = round(entry["seconds"] - base["seconds"], 3)
        entry["extra_percent"] = round(100 * (entry["seconds"] / base["seconds"] - 1), 1) if base["seconds"] else None


def side_by_side(results: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    from lorastory.generate.grid import save_storyboard

    rows = [(mode, entry) for mode, entry in results.items() if "files" in entry]
    if not rows:
        return None
    cols = len(rows[0][1]["files"])
    images = [file for _, entry in rows for file in entry["files"]]
    captions = [f"{mode}: CLIP-T {score:.1f}" if score is not None else mode
                for mode, entry in rows for score in entry["clip_t"]]
    save_storyboard(images, path, cols=cols, rows=len(rows), title=title, captions=captions, spacing=4)
    return path


def _fmt(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(results: dict[str, dict[str, Any]], setup: dict[str, Any]) -> str:
    lines = [f"Story `{setup['story']}` ({setup['panels']} panels, {setup['steps']} steps, {setup['size']}), "
             f"model `{setup['model']}`, CLIP `{setup['clip']}`, device {setup['device']}.", "",
             "| mode | consistency | gain | subject consistency | gain | CLIP-T mean | worst panel CLIP-T drop "
             "| s / story | extra |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode, entry in results.items():
        if "error" in entry:
            lines.append(f"| {mode} | error: {entry['error']} | | | | | | | |")
            continue
        s = entry["summary"]
        extra = f"{entry.get('extra_seconds', 0):+.2f} s ({entry.get('extra_percent') or 0:+.1f} %)"
        lines.append(
            f"| {mode} | {_fmt(s.get('consistency'))} | {_fmt(entry.get('consistency_gain'), signed=True)} "
            f"| {_fmt(s.get('subject_consistency'))} | {_fmt(entry.get('subject_consistency_gain'), signed=True)} "
            f"| {_fmt(s.get('clip_t_mean'), 2)} | {_fmt(entry.get('clip_t_worst_panel_drop'), 2)} "
            f"| {entry['seconds']:.2f} | {extra} |")
    return "\n".join(lines) + "\n"


def tiny_setup(args: argparse.Namespace) -> None:
    """Tiny random model, CLIP and IP-Adapter in a temporary folder: exercises the script, measures nothing."""
    from lorastory.models.ip_adapter import build_tiny_ip_adapter
    from lorastory.models.tiny import build_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="consistency-effect-"))
    args.model = str(build_tiny_model("kolors", scratch / "model"))
    args.clip = str(build_tiny_model("clip", scratch / "clip"))
    args.ip_adapter = str(build_tiny_ip_adapter(scratch / "ip-adapter", args.model))
    args.steps, args.size, args.panels = args.steps or 3, args.size or 64, args.panels or 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="diffusers folder or hub id (the toy model: its folder)")
    parser.add_argument("--story", default=str(ROOT / "examples" / "story_kolors_consistent.yaml"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--lora", default=None)
    parser.add_argument("--lora-scale", type=float, default=1.0)
    parser.add_argument("--clip", default=None, help="CLIP folder or hub id for the scores (default: eval's)")
    parser.add_argument("--ip-adapter", default=None, help="IP-Adapter folder or hub id for the reference modes")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, none first (the baseline)")
    parser.add_argument("--steps", type=int, default=None, help="override the story's steps")
    parser.add_argument("--size", type=int, default=None, help="override the story's width and height")
    parser.add_argument("--panels", type=int, default=None, help="use the first N panels only")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the one-panel one-step render that absorbs first-call costs before timing")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: a smoke test of this script")
    args = parser.parse_args()
    if args.tiny:
        tiny_setup(args)
    if not args.model:
        parser.error("--model is required (or --tiny)")

    from lorastory.models.clip import DEFAULT_CLIP
    from lorastory.eval.report import load_scorers
    from lorastory.generate.story_file import load_story

    args.clip = args.clip or DEFAULT_CLIP
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    story = load_story(args.story)
    scorers = load_scorers(args.clip, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.warmup:
        import shutil

        from lorastory.generate.story import generate_story

        warm = story_for(story, "none", args)
        warm = warm.model_copy(update={"panels": warm.panels[:1], "defaults": warm.defaults.model_copy(update={"steps": 1})})
        generate_story(warm, args.model, out / ".warmup", device=args.device)
        shutil.rmtree(out / ".warmup", ignore_errors=True)
    results: dict[str, dict[str, Any]] = {}
    first = None
    for mode in modes:
        variant = story_for(story, mode, args)
        first = first or variant
        try:
            results[mode] = run_mode(variant, mode, args, scorers)
        except LorastoryError as err:
            results[mode] = {"error": str(err)}
        print(mode, {k: v for k, v in results[mode].items() if k not in ("files", "clip_t")}, flush=True)
    compare(results)
    d = first.defaults
    setup = {"story": args.story, "model": args.model, "lora": args.lora, "clip": args.clip, "panels": len(first.panels),
             "steps": d.steps, "size": f"{d.width}x{d.height}", "device": args.device or "auto",
             "consistency": first.consistency.model_dump(mode="json", exclude={"mode"})}
    board = side_by_side(results, out / "side_by_side.png", f"{first.title or 'story'}: " + " / ".join(results))
    atomic_write_json(out / f"{RESULT}.json", {"setup": setup, "modes": results,
                                               "side_by_side": str(board) if board else None})
    table = markdown(results, setup)
    atomic_write_text(out / f"{RESULT}.md", table)
    print(table)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
