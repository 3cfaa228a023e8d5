"""bench/fp8_train_loss.py on the CPU: the tiny Kolors UNet trained on a bf16 and an fp8-stored base (issue 21)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow  # a few seconds: two tiny UNets built and trained two steps each
def test_fp8_loss_bench_compares_each_base_with_bf16(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torchao", reason="torchao is not installed: pip install 'lorastory[fp8]'")
    monkeypatch.syspath_prepend(str(BENCH))
    from fp8_train_loss import main

    out = tmp_path / "fp8_loss.json"
    monkeypatch.setattr(sys, "argv", ["fp8_train_loss.py", "--tiny", "--steps", "2", "--warm", "1", "--json", str(out)])
    assert main() == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"bf16", "fp8-weights", "fp8"}
    reference, stored = rows["bf16"], rows["fp8-weights"]
    assert len(reference["losses"]) == len(stored["losses"]) == 2 and "vs_bf16" not in reference
    assert stored["levers"].startswith("base weights:") and "float8 e4m3" in stored["levers"]
    # Same data, noise, timesteps and LoRA: the fp8-stored base moves the loss a little, not at all is suspicious too.
    assert stored["losses"] != reference["losses"]
    assert stored["vs_bf16"]["within_1pct"] and stored["vs_bf16"]["steps_compared"] == 2
    assert "compute capability 8.9+" in rows["fp8"]["skipped"] and "CPU" in rows["fp8"]["skipped"]
    printed = capsys.readouterr().out
    assert "within 1%" in printed and "fp8-weights" in printed
