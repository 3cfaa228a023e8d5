"""Run the whole fuzz corpus (tests/fuzz) and print, per entry point, what happened to each input.

    PYTHONPATH=src .venv/bin/python scripts/fuzz_report.py [--entry data-import ...] [--failures] [--json FILE]

Columns: inputs tried, exit codes (0 / 1 / other), tracebacks (a Python traceback or the
"This is a bug" line), hangs (past the case's time limit), wrong outputs (a good row lost, a bad
row missing from the report, a case check failed, or the wrong exit code where only one is
right), data lost (an input changed or a file outside the outputs touched). The same harness
as the tests: every number here is a test that fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

import corpus  # noqa: E402
import harness  # noqa: E402

COLUMNS = ("inputs", "exit 0", "exit 1", "exit other", "tracebacks", "hangs", "wrong outputs", "data lost", "failed")


def tally(outcomes: list[harness.Outcome]) -> dict[str, int]:
    codes = Counter(o.code for o in outcomes)
    return {
        "inputs": len(outcomes),
        "exit 0": codes.get(0, 0),
        "exit 1": codes.get(1, 0),
        "exit other": sum(n for code, n in codes.items() if code not in (0, 1)),
        "tracebacks": sum(1 for o in outcomes if o.traceback),
        "hangs": sum(1 for o in outcomes if o.hang),
        "wrong outputs": sum(1 for o in outcomes if o.wrong_output or o.exit_problems),
        "data lost": sum(1 for o in outcomes if o.data_lost),
        "failed": sum(1 for o in outcomes if o.failures),
    }


def print_table(rows: dict[str, dict[str, int]]) -> None:
    width = max(len(name) for name in rows) + 2
    print("entry point".ljust(width) + "".join(c.rjust(14) for c in COLUMNS))
    for name, counts in rows.items():
        print(name.ljust(width) + "".join(str(counts[c]).rjust(14) for c in COLUMNS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", action="append", choices=corpus.ENTRIES, help="only these entry points (repeatable)")
    parser.add_argument("--failures", action="store_true", help="also print every failed case with its output")
    parser.add_argument("--json", type=Path, help="write every outcome to this file")
    args = parser.parse_args(argv)

    cases = [c for c in corpus.all_cases() if not args.entry or c.entry in args.entry]
    outcomes: list[harness.Outcome] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorastory-fuzz-") as tmp:
        base = Path(tmp)
        resources = harness.SessionResources(base / "resources")
        resources.base.mkdir()
        for index, case in enumerate(cases, start=1):
            outcome = harness.run_case(case, resources, base / "cases")
            outcomes.append(outcome)
            mark = "FAIL" if outcome.failures else "ok"
            print(f"[{index:3d}/{len(cases)}] {mark:4s} {outcome.seconds:5.1f} s  {case.id}", file=sys.stderr, flush=True)

    by_entry: dict[str, list[harness.Outcome]] = {}
    for outcome in outcomes:
        by_entry.setdefault(outcome.case.entry, []).append(outcome)
    rows = {entry: tally(found) for entry, found in by_entry.items()}
    rows["total"] = tally(outcomes)
    print()
    print_table(rows)
    print(f"\n{len(outcomes)} inputs in {time.perf_counter() - started:.0f} s")
    failed = [o for o in outcomes if o.failures]
    if failed:
        print(f"\nfailed cases ({len(failed)}):")
        for outcome in failed:
            print(f"  {outcome.case.id} [{outcome.case.family}]: {outcome.failures[0][:200]}")
    if args.failures:
        print()
        for outcome in failed:
            print(outcome.describe() + "\n")
    if args.json:
        args.json.write_text(json.dumps([
            {"id": o.case.id, "entry": o.case.entry, "family": o.case.family, "code": o.code, "seconds": round(o.seconds, 2),
             "traceback": o.traceback, "hang": o.hang, "exit_problems": o.exit_problems, "data_lost": o.data_lost,
             "wrong_output": o.wrong_output} for o in outcomes], ensure_ascii=False, indent=1), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
