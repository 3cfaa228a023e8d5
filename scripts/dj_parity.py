"""Record what the real Data-Juicer does with each parity case, for tests/data/test_dj_parity.py to compare against.

Usage (Data-Juicer 1.6.1 installed in its own virtual environment)::

    python scripts/dj_parity.py                      # every case
    python scripts/dj_parity.py clean_links_mapper   # only cases whose name contains this
    python scripts/dj_parity.py --dj-python /path/to/venv/bin/python

The script runs under any Python with PyYAML (lorastory is not imported); it
starts ``--dj-python`` (default ``$DJ_PYTHON`` or /work/djvenv/bin/python)
once, which runs every case through ``data_juicer.core.DefaultExecutor`` in
a temporary folder (``np: 1``), and writes one expectation per case.

Case format: drop files into tests/data/dj_parity/cases/ and run the script.

``cases/<case>.yaml`` (the case name is the file name)::

    # What this case checks (free text; the first comment line is the case's title).
    input: text_mixed.jsonl        # a jsonl in cases/ (shared by several cases); default <case>.jsonl
    recipe:                        # optional Data-Juicer global keys, e.g. text_keys, image_key
      image_key: images
    process:                       # the Data-Juicer process list, unchanged
      - clean_links_mapper:
      - words_num_filter: {min_num: 3}
    dj_shims: [punkt_untrained]    # optional: offline stand-ins for what Data-Juicer would download
    ignore_stats: [num_words]      # optional: stats keys not compared (a documented difference)
    stats_rel_tol: 1.0e-6          # optional: relative tolerance for float stats (default 1e-9), e.g.
                                   # a float32 cosine computed in another order

Every string in ``recipe`` and ``process`` may contain ``{cases}``: the
absolute path of cases/ (for word-list folders, tokenizer folders, images).
Input rows are Data-Juicer rows: ``text`` plus, for image ops, ``images``
(paths relative to cases/, e.g. ``images/cat.jpg``; put them in cases/images/).

``expected/<case>.json`` (written here; never edit by hand)::

    {"case": ..., "title": ..., "data_juicer": "1.6.1", "source_sha256": ...,
     "rows": [kept rows in order, __dj__* fields removed, image paths relative to cases/],
     "stats": [the __dj__stats__ of each kept row], "error": null}

``source_sha256`` hashes the case file, its input and the files or folders under
cases/ that it names with ``{cases}/NAME``, so the test tells a
stale expectation from a real difference. When Data-Juicer itself fails on
a case, ``error`` holds its last line and the test expects lorastory to
refuse it too (before writing anything or with every row skipped).

Shims (applied inside the Data-Juicer process only):
  ``punkt_untrained``: NLTK's Punkt with no trained parameters instead of the
  ``punkt`` pickle Data-Juicer downloads (what lorastory uses without punkt_tab data).
  ``clip_features_tensor``: CLIP's ``get_image_features``/``get_text_features`` return
  the projected tensor, as in transformers 4, which Data-Juicer 1.6.1 was written for
  (transformers 5 returns an output object, and Data-Juicer's cosine then fails on every row).
  ``pair_similarity_list``: ``image_pair_similarity`` stored as a list of floats;
  Data-Juicer 1.6.1 stores a torch tensor, which its stats export cannot encode
  ("Maximum recursion level reached"), so the op fails on any data there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "data" / "dj_parity"
CASES = PARITY / "cases"
EXPECTED = PARITY / "expected"
DJ_FIELD_PREFIX = "__dj__"

# Runs inside the Data-Juicer virtual environment: argv[1] is a JSON list of jobs, argv[2] the file
# its results go to (Data-Juicer redirects stdout into its logger).
_DRIVER = r"""
import json, sys, traceback
jobs = json.loads(open(sys.argv[1]).read())
results = open(sys.argv[2], "a", encoding="utf-8")

def report(message):
    results.write(json.dumps(message) + "\n")
    results.flush()

from loguru import logger
logger.remove()
logger.add(sys.stderr, level="ERROR")

def shim_punkt_untrained():
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    from data_juicer.utils import model_utils
    model_utils.ensure_nltk_resource = lambda *a, **k: True
    nltk.data.load = lambda *a, **k: PunktSentenceTokenizer()

def shim_clip_features_tensor():
    import functools
    import transformers
    for cls in (transformers.CLIPModel, transformers.ChineseCLIPModel):
        for name in ("get_image_features", "get_text_features"):
            def wrap(original):
                @functools.wraps(original)
                def features(self, *args, **kwargs):
                    out = original(self, *args, **kwargs)
                    return getattr(out, "pooler_output", out)
                return features
            setattr(cls, name, wrap(getattr(cls, name)))

def shim_pair_similarity_list():
    from data_juicer.ops.filter.image_pair_similarity_filter import ImagePairSimilarityFilter
    original = ImagePairSimilarityFilter.compute_stats_single
    def compute_stats_single(self, sample, *args, **kwargs):
        sample = original(self, sample, *args, **kwargs)
        stats = sample["__dj__stats__"]
        if hasattr(stats.get("image_pair_similarity"), "tolist"):
            stats["image_pair_similarity"] = [float(v) for v in stats["image_pair_similarity"].detach().tolist()]
        return sample
    ImagePairSimilarityFilter.compute_stats_single = compute_stats_single

from data_juicer.config import init_configs
from data_juicer.core import DefaultExecutor
import data_juicer
report({"version": data_juicer.__version__})
for job in jobs:
    for shim in job["shims"]:
        globals()["shim_" + shim]()
    try:
        cfg = init_configs(args=["--config", job["recipe"]])
        DefaultExecutor(cfg).run()
        report({"case": job["case"], "error": None})
    except BaseException as err:  # a failing case is recorded, the others still run
        last = (traceback.format_exception_only(type(err), err)[-1]).strip()
        report({"case": job["case"], "error": last[:500]})
"""


def expand(value: object, cases_dir: Path) -> object:
    """``value`` with ``{cases}`` in every string replaced by the absolute cases folder."""
    if isinstance(value, str):
        return value.replace("{cases}", str(cases_dir))
    if isinstance(value, list):
        return [expand(item, cases_dir) for item in value]
    if isinstance(value, dict):
        return {key: expand(item, cases_dir) for key, item in value.items()}
    return value


def load_case(path: Path) -> dict:
    """The case file's content plus its name, title, input path and source hash."""
    text = path.read_text(encoding="utf-8")
    case = yaml.safe_load(text) or {}
    case["name"] = path.stem
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
    case["title"] = title
    case["input_path"] = path.parent / case.get("input", f"{path.stem}.jsonl")
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(case["input_path"].read_bytes())
    for used in sorted(set(re.findall(r"\{cases\}/([^/'\"\s]+)", text))):  # word lists, tokenizer folders...
        target = path.parent / used
        for part in sorted(target.rglob("*")) if target.is_dir() else [target]:
            if part.is_file():
                digest.update(part.relative_to(path.parent).as_posix().encode() + part.read_bytes())
    case["source_sha256"] = digest.hexdigest()
    return case


def recipe_for(case: dict, export_path: Path, cases_dir: Path = CASES) -> dict:
    """The Data-Juicer recipe that runs ``case`` (also what lorastory runs in the test)."""
    recipe = {"project_name": f"parity-{case['name']}", "np": 1, **expand(case.get("recipe") or {}, cases_dir)}
    recipe["dataset_path"] = str(case["input_path"])
    recipe["export_path"] = str(export_path)
    recipe["process"] = expand(case.get("process") or [], cases_dir)
    return recipe


def normalise_rows(export_path: Path, image_key: str, cases_dir: Path = CASES) -> tuple[list[dict], list[dict]]:
    """Kept rows (without ``__dj__*`` fields, image paths relative to cases/) and their stats, in order."""
    rows: list[dict] = []
    stats: list[dict] = []
    if not export_path.exists():
        return rows, stats
    stats_path = export_path.with_name(export_path.stem + "_stats.jsonl")
    for line in export_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        stats.append(row.get(f"{DJ_FIELD_PREFIX}stats__", {}))
        row = {key: value for key, value in row.items() if not key.startswith(DJ_FIELD_PREFIX)}
        if isinstance(row.get(image_key), list):
            row[image_key] = [relative_image(path, cases_dir) for path in row[image_key]]
        rows.append(row)
    if stats_path.exists():
        stats = [json.loads(line).get(f"{DJ_FIELD_PREFIX}stats__", {}) for line in
                 stats_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(stats) != len(rows):  # no stats file (a recipe without filters)
        stats = [{} for _ in rows]
    return rows, stats


def relative_image(path: str, cases_dir: Path) -> str:
    """An exported image path relative to cases/ when it lies there (else unchanged)."""
    absolute = os.path.normpath(path)
    if absolute.startswith(str(cases_dir) + os.sep):
        return os.path.relpath(absolute, cases_dir)
    return path


def run_data_juicer(cases: list[dict], dj_python: str, work: Path) -> tuple[str, dict[str, str | None]]:
    """Run every case in one Data-Juicer process; returns its version and each case's error (or None)."""
    jobs = []
    for case in cases:
        folder = work / case["name"]
        folder.mkdir()
        recipe = recipe_for(case, folder / "out" / "result.jsonl")
        recipe["work_dir"] = str(folder / "work")
        recipe_path = folder / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
        jobs.append({"case": case["name"], "recipe": str(recipe_path), "shims": case.get("dj_shims") or []})
    jobs_path = work / "jobs.json"
    jobs_path.write_text(json.dumps(jobs), encoding="utf-8")
    driver = work / "driver.py"
    driver.write_text(_DRIVER, encoding="utf-8")
    results = work / "results.jsonl"
    done = subprocess.run([dj_python, str(driver), str(jobs_path), str(results)], cwd=work, capture_output=True, text=True)
    version, errors = "?", {}
    for line in results.read_text(encoding="utf-8").splitlines() if results.exists() else []:
        if line.startswith("{"):
            message = json.loads(line)
            if "version" in message:
                version = message["version"]
            elif "case" in message:
                errors[message["case"]] = message["error"]
    if done.returncode != 0 and not errors:
        sys.exit(f"error: Data-Juicer did not start: {done.stderr.strip().splitlines()[-1:]}")
    missing = [case["name"] for case in cases if case["name"] not in errors]
    for name in missing:  # the process died in this case
        errors[name] = f"Data-Juicer process died: {done.stderr.strip().splitlines()[-1:]}"
    return version, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="run only cases whose name contains one of these")
    parser.add_argument("--dj-python", default=os.environ.get("DJ_PYTHON", "/work/djvenv/bin/python"))
    args = parser.parse_args(argv)
    paths = sorted(CASES.glob("*.yaml"))
    if args.only:
        paths = [p for p in paths if any(word in p.stem for word in args.only)]
    if not paths:
        print("error: no case matches", file=sys.stderr)
        return 1
    if not Path(args.dj_python).exists():
        print(f"error: --dj-python {args.dj_python}: no such interpreter (a venv with py-data-juicer==1.6.1)", file=sys.stderr)
        return 1
    cases = [load_case(path) for path in paths]
    EXPECTED.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dj-parity-") as tmp:
        version, errors = run_data_juicer(cases, args.dj_python, Path(tmp))
        for case in cases:
            image_key = (case.get("recipe") or {}).get("image_key", "images")
            rows, stats = normalise_rows(Path(tmp) / case["name"] / "out" / "result.jsonl", image_key)
            error = errors.get(case["name"])
            record = {
                "case": case["name"],
                "title": case["title"],
                "data_juicer": version,
                "source_sha256": case["source_sha256"],
                "rows": [] if error else rows,
                "stats": [] if error else stats,
                "error": error,
            }
            out = EXPECTED / f"{case['name']}.json"
            out.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            state = f"error: {error}" if error else f"{len(rows)} rows kept"
            print(f"{case['name']}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
