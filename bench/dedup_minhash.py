"""Time near-duplicate removal: ``lorastory data run`` vs Data-Juicer 1.6.1 on the same captions, same recipe.

Writes N seeded captions (about 1 in 5 a near or exact copy of an earlier one),
runs ``document_deduplicator`` + ``document_minhash_deduplicator`` (defaults) +
``document_simhash_deduplicator`` with both, checks they keep the same rows in
the same order, and prints wall times as JSON.

    .venv/bin/python bench/dedup_minhash.py --rows 20000 --dj-python /work/djvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

WORDS = ("a girl boy cat dog fox red blue green small large old young running sitting standing near under over "
         "the of with in on at forest river city street window garden mountain snow rain sun moon night "
         "morning evening anime style painting sketch watercolor portrait landscape detailed soft light").split()


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows: list[str] = []
    for _ in range(n):
        if rows and rng.random() < 0.2:
            words = rng.choice(rows).split()
            if rng.random() < 0.5:
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            rows.append(" ".join(words))
        else:
            rows.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))))
    return rows


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--dj-python", default="/work/djvenv/bin/python")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        work = Path(tmp)
        data = work / "captions.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in captions(args.rows, 0)))
        process = [{"document_deduplicator": None}, {"document_minhash_deduplicator": None},
                   {"document_simhash_deduplicator": None}]
        times, kept = {}, {}
        for who in ("lorastory", "data_juicer"):
            out = work / who / "result.jsonl"
            recipe = {"project_name": "bench", "dataset_path": str(data), "export_path": str(out), "np": args.np,
                      "process": process, "open_tracer": False, "use_cache": False, "work_dir": str(work / who)}
            path = work / f"{who}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            if who == "lorastory":
                cmd = [str(Path(sys.executable).parent / "lorastory"), "data", "run", str(path)]
                times[who] = run(cmd, work)
            else:
                dj = str(Path(args.dj_python).parent / "dj-process")
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "HF_DATASETS_CACHE": str(work / "hfcache")}
                times[who] = run([dj, "--config", str(path)], work, env)
            kept[who] = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        print(json.dumps({"rows": args.rows, "np": args.np, "kept": len(kept["lorastory"]),
                          "same_rows": kept["lorastory"] == kept["data_juicer"],
                          "wall_s": {k: round(v, 2) for k, v in times.items()},
                          "speedup": round(times["data_juicer"] / times["lorastory"], 1)}, indent=1))


if __name__ == "__main__":
    main()
