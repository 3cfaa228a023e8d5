"""bench/flux_backward_probe.py's CPU smoke run: the GPU session gets one call for it, so it must run as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _probe(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "flux_backward_probe.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_probe_runs_an_op_case_and_the_full_control_on_the_tiny_model(tmp_path):
    out = tmp_path / "probe.json"
    done = _probe("--tiny", "--cases", "rmsnorm-strided,full-lorastory", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert [c["case"] for c in report["plan"]] == ["rmsnorm-strided", "full-lorastory"]
    assert set(report["environment"]["sdpa_enabled"]) == {"flash", "efficient", "cudnn", "math"}
    strided, control = report["cases"]
    assert strided["status"] == control["status"] == "ok"
    # every layout's input gradient checked against the float32 formula, within bf16's rounding
    assert "image grad cat-slice transposed, weight frozen" in strided["result"]["layouts"]
    assert all(r["max_err"] < 0.1 for r in strided["result"]["layouts"].values())
    assert control["result"]["loss"] > 0 and control["last_step"].startswith("bench/_dit_train.py")
    assert "full-lorastory" in done.stdout.splitlines()[-1]  # the closing table

