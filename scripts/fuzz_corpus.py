"""Write the fuzz corpus (tests/fuzz/corpus.py) to a folder: one folder per case with its inputs and command.

    PYTHONPATH=src .venv/bin/python scripts/fuzz_corpus.py --out DIR [--entry ENTRY ...] [--no-models]

Each case folder holds the files the case builds and ``command.json`` (the lorastory arguments,
the paths it may write, the exit code it must give). Model cases need the tiny models, a story
run and a trained run: they are built once under DIR/_resources (``--no-models`` leaves those
cases out). Special files (FIFOs, symlink loops, folders named x.png) are created as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

import corpus  # noqa: E402
import harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument("--entry", action="append", choices=corpus.ENTRIES, help="only these entry points (repeatable)")
    parser.add_argument("--no-models", action="store_true", help="leave out the cases that need models")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; choose a new folder", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    resources = harness.SessionResources(out / "_resources")
    resources.base.mkdir()
    made = 0
    for case in corpus.all_cases():
        if (args.entry and case.entry not in args.entry) or (args.no_models and case.model):
            continue
        root = out / case.id.replace("/", "__")
        root.mkdir()
        spec = case.build(root, resources)
        (root / "command.json").write_text(json.dumps({
            "id": case.id, "family": case.family, "timeout_s": case.timeout,
            "command": ["lorastory", *spec.args], "cwd": str(root), "may_write": spec.outputs, "protected": spec.protect,
            "expected_exit": {"any": "0 or 1", "ok": "0", "error": "1"}[spec.expect],
            "good_rows": spec.good, "bad_rows": spec.bad, "kept_or_reported": spec.either,
        }, indent=1, default=os.fsdecode), encoding="utf-8")  # ASCII: names may hold lone surrogates
        files = sum(len(names) + len(dirs) for _f, dirs, names in os.walk(root)) - 1
        command = " ".join(spec.args)[:150].encode("utf-8", "backslashreplace").decode("utf-8")
        print(f"{case.id:60s} {case.family:13s} {files:3d} entries  lorastory {command}")
        made += 1
    print(f"\n{made} cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
