"""Fuzz: every bad input of the corpus for `lorastory data run` (issue 15).

Each case must end with exit 0 or 1, no traceback, inside its time limit, nothing written outside
its outputs (inputs byte-identical), and, for the data stages, every good row kept and every bad
row in the report. See corpus.py for the inputs and harness.py for the checks.
"""

from __future__ import annotations

import pytest

from corpus import cases_for
from harness import run_case

CASES = cases_for("data-run")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_data_run_survives_bad_input(case, fuzz_resources, tmp_path):
    outcome = run_case(case, fuzz_resources, tmp_path)
    if outcome.failures:
        pytest.fail(outcome.describe(), pytrace=False)
