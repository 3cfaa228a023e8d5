"""Record parity expectations with ``dj-process`` per case, for cases whose Data-Juicer ops start processes.

scripts/dj_parity.py runs every case inside one driver script; Data-Juicer's
deduplicators and face/subplot filters start worker processes, which re-run
that driver from the top (no ``__main__`` guard) and fail. This records the same
``expected/<case>.json`` with the same helpers (load_case, recipe_for,
normalise_rows from scripts/dj_parity.py), one ``dj-process --config`` per case.

    python scripts/dj_parity_dj_process.py document_minhash_deduplicator image_face_count_filter ...
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

_spec = importlib.util.spec_from_file_location("dj_parity", Path(__file__).with_name("dj_parity.py"))
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

DJ_PROCESS = "/work/djvenv/bin/dj-process"


def record(path: Path, dj_process: str) -> str:
    """Run one case with Data-Juicer, write its expectation, return a one-line summary."""
    case = parity.load_case(path)
    with tempfile.TemporaryDirectory(prefix="dj-parity-") as tmp:
        work = Path(tmp)
        recipe = parity.recipe_for(case, work / "out" / "result.jsonl")
        recipe.update(work_dir=str(work / "work"), open_tracer=False)
        (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "DJ_PRODUCED_DATA_DIR": str(work / "produced")}
        done = subprocess.run([dj_process, "--config", str(work / "recipe.yaml")], cwd=work,
                              capture_output=True, text=True, env=env)
        error = None
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if "rror" in line]
            error = (lines[-1] if lines else "Data-Juicer failed")[:500]
        image_key = (case.get("recipe") or {}).get("image_key", "images")
        rows, stats = parity.normalise_rows(work / "out" / "result.jsonl", image_key)
    record = {"case": case["name"], "title": case["title"], "data_juicer": "1.6.1",
              "source_sha256": case["source_sha256"], "rows": [] if error else rows,
              "stats": [] if error else stats, "error": error}
    parity.EXPECTED.mkdir(parents=True, exist_ok=True)
    out = parity.EXPECTED / f"{case['name']}.json"
    out.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return f"{case['name']}: " + (f"error: {error}" if error else f"{len(rows)} rows kept")


def main(names: list[str]) -> int:
    paths = [parity.CASES / f"{name}.yaml" for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if not names or missing:
        print(f"error: name cases in {parity.CASES} (missing: {', '.join(missing) or 'none given'})", file=sys.stderr)
        return 1
    for path in paths:
        print(record(path, DJ_PROCESS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
