"""The over-training case on the toy model: the checkpoints that stop drawing the prompt are not chosen.

Two toy pictures, a learning rate 50 times the demo's: within 100 steps the LoRA stops drawing what
the prompts ask (a girl on grass) and draws towards its two training pictures (a house on sand, a
heart and a tree) — the outputs' similarity to their nearest training picture climbs, their content
CLIP-T collapses. The rule must keep away from those checkpoints, and the recommended (step, scale)
must score at least what the last checkpoint does at scale 1.
"""

from __future__ import annotations

import csv
import shutil

import pytest

from lorastory.eval.checkpoints import CheckpointsReport
from lorastory.eval.selection import combined_score
from lorastory.eval.sweep import SweepReport
from lorastory.toyworld.dataset import write_toy_dataset

PICTURES, STEPS, EVERY, LR = 2, 100, 25, 5e-3
PROMPTS = ["一个红色长发、穿蓝色衣服的女孩在中间，草地上，白天，黑色描边的漫画风格",
           "一个红色长发、穿蓝色衣服的女孩在左边，右边有一座房子，草地上，白天，黑色描边的漫画风格"]


def _train_folder(tmp_path):
    drawn = write_toy_dataset(tmp_path / "raw", count=PICTURES, style="outlined", seed=0, bad_samples=False)
    data = tmp_path / "train"
    (data / "images").mkdir(parents=True)
    with open(data / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for name in drawn.good:
            shutil.copy(drawn.folder / f"{name}.png", data / "images" / f"{name}.png")
            writer.writerow([f"images/{name}.png", (drawn.folder / f"{name}.txt").read_text(encoding="utf-8")])
    return data


@pytest.mark.slow
def test_the_over_trained_checkpoints_are_avoided(cli, toy_model_path, tmp_path):
    run = tmp_path / "run"
    modules = [arg for m in ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2") for arg in ("--target-module", m)]
    trained = cli("train", "--model", toy_model_path("kolors"), "--data", _train_folder(tmp_path), "--out", run,
                  "--resolution", "128", "--rank", "16", "--alpha", "16", "--lr", str(LR), "--max-steps", str(STEPS),
                  "--batch-size", "4", "--checkpoint-every", str(EVERY), "--no-gradient-checkpointing", "--seed", "0",
                  *modules, *[arg for p in PROMPTS for arg in ("--validation-prompt", p)],
                  "--validation-style", "黑色描边的漫画风格", "--validation-steps", "8", "--validation-cfg", "5",
                  "--eval-clip", toy_model_path("clip"))
    assert trained.code == 0, trained.err
    scored = cli("eval", "checkpoints", run, "--seeds", "1")
    assert scored.code == 0, scored.err
    report = CheckpointsReport.model_validate_json((run / "eval" / "checkpoints.json").read_bytes())
    base, last = report.candidates[0], report.candidates[-1]
    assert [c.step for c in report.candidates] == [0, 25, 50, 75, 100]
    # Over-trained: the last checkpoint draws its training pictures, not the prompts.
    assert last.scores.memorisation > base.scores.memorisation + 0.2
    assert last.scores.content < base.scores.content - 20
    chosen = report.candidates[report.choice.index]
    assert chosen.step < STEPS and chosen.scores.content > last.scores.content + 20

    swept = cli("eval", "sweep", run, "--scales", "0.5,1", "--seeds", "1")
    assert swept.code == 0, swept.err
    sweep = SweepReport.model_validate_json((run / "eval" / "sweep.json").read_bytes())
    assert sweep.lora.endswith("best.safetensors")
    at = next(c for c in sweep.candidates if c.scale == sweep.recommended_scale)
    assert combined_score(at.scores, report.settings) >= last.combined
