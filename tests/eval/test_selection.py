"""The checkpoint/scale selection rule: combined score, near-copies and the content floor decide."""

from __future__ import annotations

import pytest

from lorastory.eval.selection import Candidate, SelectionSettings, choose, combined_score
from lorastory.eval.set_scores import NearCopy, SetScores


def _candidate(step: int, style: float, content: float, copies: int = 0, images: int = 4) -> Candidate:
    near = [NearCopy(prompt="p", seed=i, similarity=0.99, training_picture=f"{i}.png") for i in range(copies)]
    scores = SetScores(style=style, content=content, near_copies=near, images=images, memorisation=0.9)
    return Candidate(label="step 0 (base)" if step == 0 else f"step {step}", step=step, scale=1.0,
                     lora=None if step == 0 else f"step-{step}.safetensors", scores=scores)


def test_the_memorising_checkpoint_is_passed_over_for_the_best_clean_one():
    candidates = [_candidate(0, 0.50, 30.0), _candidate(100, 0.70, 29.5), _candidate(200, 0.80, 29.0),
                  _candidate(300, 0.95, 29.0, copies=1)]
    choice = choose(candidates, SelectionSettings())
    assert choice.step == 200
    assert choice.reason == "step 200: style 0.80 (84% of the maximum), content \u22121.0 vs base, no near-copies"
    assert candidates[3].eligible is False and "1 near-copies" in candidates[3].why_not
    # Without the near-copy rule and penalty the copying checkpoint wins on style.
    loose = SelectionSettings(max_near_copies=4, near_copy_penalty=0)
    assert choose(candidates, loose).step == 300


def test_content_floor_relative_to_the_base_and_absolute():
    candidates = [_candidate(0, 0.50, 30.0), _candidate(100, 0.70, 29.5), _candidate(200, 0.90, 26.0)]
    assert choose(candidates, SelectionSettings()).step == 100  # 26.0 is 4 below the base: more than 2
    assert choose(candidates, SelectionSettings(max_content_drop=None)).step == 200
    assert choose(candidates, SelectionSettings(max_content_drop=None, min_content=29.6)).step == 200  # none pass
    assert "no candidate met the rule" in choose(candidates, SelectionSettings(max_content_drop=None, min_content=29.6)).reason


def test_weights_change_the_combined_score():
    scores = _candidate(1, 0.5, 20.0, copies=1, images=4).scores
    assert combined_score(scores, SelectionSettings()) == pytest.approx(50 + 20 - 25)
    assert combined_score(scores, SelectionSettings(style_weight=2, content_weight=0.5, near_copy_penalty=0)) == pytest.approx(110)


def test_settings_round_trip_yaml_and_refuse_bad_values(tmp_path):
    from lorastory.errors import ConfigError

    settings = SelectionSettings(style_weight=0.5, min_content=25)
    path = tmp_path / "select.yaml"
    settings.save_yaml(path)
    assert SelectionSettings.from_yaml(path) == settings
    with pytest.raises(ConfigError, match="near_copy"):
        SelectionSettings.from_dict({"near_copy": 2})
