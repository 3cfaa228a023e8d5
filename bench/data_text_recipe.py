"""Benchmark a caption-cleaning recipe (Data-Juicer text mappers and filters): lorastory vs real Data-Juicer.

Writes ``--n`` seeded captions (English and Chinese, with the dirt real
scraped captions carry: HTML, links, e-mails, IPs, mojibake, full-width
punctuation, odd spaces, bullets, repeated sentences, long tokens, spam
repetition, near-duplicates), one recipe of text mappers and filters (plus
``document_minhash_deduplicator`` when lorastory has it, or with ``--minhash``),
then times on the same file and the same ``np``:

(a) ``lorastory data run RECIPE -q`` as a subprocess (start-up included);
(b) with ``--dj-python``, Data-Juicer's ``dj-process --config RECIPE`` from its
    own virtualenv (empty datasets cache), and checks both keep the same rows
    with the same rewritten text.

Usage (from the repository root)::

    .venv/bin/python bench/data_text_recipe.py --n 100000 --np 2 \\
        --dj-python /work/djvenv/bin/python --json bench/out/data_text_recipe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _timing import time_command

REPO = Path(__file__).resolve().parent.parent

SUBJECTS = ["a red fox", "an old lighthouse", "a girl with an umbrella", "two cats", "a mountain village",
            "a robot reading", "a koi pond", "a rainy street", "a bowl of ramen", "a paper crane"]
STYLES = ["watercolor", "oil painting", "anime style", "pixel art", "photo, 35mm", "ink wash", "3d render"]
DETAILS = ["soft light", "at night", "in the snow", "golden hour", "high detail", "pastel colors", "wide angle"]
ZH_SUBJECTS = ["一只小猫", "古老的灯塔", "撑伞的女孩", "山村", "读书的机器人", "锦鲤池", "雨中的街道", "一碗拉面"]
ZH_DETAILS = ["柔和的光线", "夜晚", "雪中", "黄昏", "高细节", "淡彩", "廣角鏡頭", "電影感"]
DIRT = [
    lambda r: f"<p>{r}</p>",
    lambda r: f"{r} <b>new</b><br/>&amp; more",
    lambda r: f"{r} https://example.com/img/{r.__hash__() & 0xffff}.jpg",
    lambda r: f"{r} www.shop{len(r)}.com/item",
    lambda r: f"{r} contact: artist{len(r)}@mail.example.com",
    lambda r: f"{r} 192.168.{len(r) % 256}.7",
    lambda r: r.replace("'", "â€™") + " doesnâ€™t",
    lambda r: r.replace(",", "，") + "！（完）",
    lambda r: f"  {r}\u3000\u00a0 \t",
    lambda r: f"● {r} ◆",
    lambda r: f"{r}. {r}. {r}.",
    lambda r: f"{r} aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    lambda r: f"{r} buy now buy now buy now buy now buy now",
    lambda r: f"{r} !!!!!!! ###### $$$$ 12345678",
]

RECIPE = """\
project_name: 'text-bench'
dataset_path: '{dataset}'
export_path: '{export}'
np: {np}
text_keys: 'text'
image_key: 'image'
process:
  - fix_unicode_mapper:
  - clean_html_mapper:
  - clean_links_mapper:
  - clean_email_mapper:
  - clean_ip_mapper:
  - punctuation_normalization_mapper:
  - whitespace_normalization_mapper:
  - remove_specific_chars_mapper:
  - chinese_convert_mapper:
      mode: t2s
  - remove_repeat_sentences_mapper:
  - remove_long_words_mapper:
      max_len: 30
  - text_length_filter:
      min_len: 8
      max_len: 300
  - alphanumeric_filter:
      min_ratio: 0.5
  - special_characters_filter:
      max_ratio: 0.3
  - character_repetition_filter:
      rep_len: 5
      max_ratio: 0.3
  - word_repetition_filter:
      rep_len: 2
      max_ratio: 0.4
  - maximum_line_length_filter:
      min_len: 8
      max_len: 300
{minhash}"""

MINHASH = """\
  - document_minhash_deduplicator:
      tokenization: space
      window_size: 3
      jaccard_threshold: 0.7
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="captions (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--np", type=int, default=2, help="the recipe's np")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of ours; the best counts")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench/out/data_text_recipe")
    parser.add_argument("--dj-python", type=Path, help="python of a Data-Juicer virtualenv (runs its dj-process)")
    parser.add_argument("--minhash", choices=["auto", "yes", "no"], default="auto",
                        help="add document_minhash_deduplicator (auto: when lorastory registers it)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args()


def caption(rng: random.Random) -> str:
    """One caption, clean two times in five, else with one or two kinds of dirt."""
    if rng.random() < 0.25:
        text = f"{rng.choice(ZH_SUBJECTS)}，{rng.choice(ZH_DETAILS)}，{rng.choice(ZH_DETAILS)}"
    else:
        text = f"{rng.choice(SUBJECTS)}, {rng.choice(STYLES)}, {rng.choice(DETAILS)}, {rng.choice(DETAILS)}"
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        text = rng.choice(DIRT)(text)
    return text


def write_dataset(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n):
            row = {"text": caption(rng), "image": [f"images/{index:06d}.jpg"]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def kept_texts(export: Path) -> dict[str, str]:
    """Kept rows' text by their (unique) image path."""
    with open(export, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return {row["image"][0]: row["text"] for row in rows}


def compare(ours: dict[str, str], theirs: dict[str, str], stats_path: Path) -> dict[str, Any]:
    """Rows kept by one side only, and rows both kept whose text differs (first 5 of each listed)."""
    with open(stats_path, encoding="utf-8") as handle:
        stats = [json.loads(line)["__dj__stats__"] for line in handle]
    ours_stats = dict(zip(ours, stats))
    only_ours = [key for key in ours if key not in theirs]
    return {
        "same_kept_text": ours == theirs,
        "n_only_ours": len(only_ours),
        "n_only_dj": sum(1 for key in theirs if key not in ours),
        "n_text_differ": sum(1 for key in ours if key in theirs and ours[key] != theirs[key]),
        "only_ours": [{"text": ours[key], "stats": ours_stats[key]} for key in only_ours[:5]],
    }


def has_minhash() -> bool:
    probe = [sys.executable, "-c", "from lorastory.data.ops import registered_ops as r; "
             "raise SystemExit(0 if 'document_minhash_deduplicator' in r() else 1)"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def main() -> None:
    args = parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "captions.jsonl"
    write_dataset(dataset, args.n, args.seed)
    minhash = args.minhash == "yes" or (args.minhash == "auto" and has_minhash())
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": args.n, "np": args.np, "minhash": minhash,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()},
    }
    recipes = {}
    for who in ("ours", "dj"):
        recipe = work / f"recipe_{who}.yaml"
        recipe.write_text(RECIPE.format(dataset=dataset, export=work / who / "result.jsonl", np=args.np,
                                        minhash=MINHASH if minhash else ""), encoding="utf-8")
        recipes[who] = recipe
    cli = str(Path(sys.executable).with_name("lorastory"))
    runs = [time_command([cli, "data", "run", str(recipes["ours"]), "-q"], work, work / "ours.log")
            for _ in range(args.repeat)]
    wall, cpu = min(runs)
    results["ours"] = {"wall_s": wall, "cpu_s": cpu, "rows_per_s": args.n / wall, "all_wall_s": [r[0] for r in runs]}
    ours = kept_texts(work / "ours" / "result.jsonl")
    results["ours"]["kept"] = len(ours)
    print(f"ours: {wall:.2f} s wall, {cpu:.2f} s CPU, {args.n / wall:,.0f} rows/s, {len(ours)} kept")
    if args.dj_python:
        cache = work / "dj_hf_cache"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "dj", ignore_errors=True)
        env = dict(os.environ, HF_DATASETS_CACHE=str(cache))
        command = [str(args.dj_python.with_name("dj-process")), "--config", str(recipes["dj"])]
        dj_wall, dj_cpu = time_command(command, work, work / "dj.log", env)
        theirs = kept_texts(work / "dj" / "result.jsonl")
        results["dj"] = {"wall_s": dj_wall, "cpu_s": dj_cpu, "rows_per_s": args.n / dj_wall, "kept": len(theirs)}
        results["compare"] = compare(ours, theirs, work / "ours" / "result_stats.jsonl")
        results["ratio_wall"], results["ratio_cpu"] = dj_wall / wall, dj_cpu / cpu
        print(f"data-juicer: {dj_wall:.2f} s wall, {dj_cpu:.2f} s CPU, {len(theirs)} kept; ratio {dj_wall / wall:.1f}x "
              f"wall, {dj_cpu / cpu:.1f}x CPU; {json.dumps({k: v for k, v in results['compare'].items() if k != 'only_ours'})}")
    results["machine"]["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
