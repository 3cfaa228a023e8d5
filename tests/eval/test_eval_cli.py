"""``lorastory eval`` on a tiny generated run: scores.json, the table, annotation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from lorastory.eval.report import evaluate_run, read_run


def _scores(run):
    return json.loads((run / "scores.json").read_text(encoding="utf-8"))


def test_eval_writes_scores_and_prints_the_table(cli, run_copy, tiny_clip, plain_clip):
    result = cli("eval", run_copy, "--clip", tiny_clip)
    assert result.code == 0, result.err
    scores = _scores(run_copy)
    assert [p["file"] for p in scores["panels"]] == ["panel-01.png", "panel-02.png", "panel-03.png"]
    assert scores["panels"][0]["prompt"] == "二次元,紫色长发少女,在练习室唱歌,水彩"
    # CLIP-T is the real thing: plain transformers gives the same numbers.
    images = [Image.open(run_copy / p["file"]).convert("RGB") for p in scores["panels"]]
    image_emb, text_emb, _ = plain_clip(tiny_clip, images, [p["prompt"] for p in scores["panels"]])
    assert [p["clip_t"] for p in scores["panels"]] == pytest.approx(
        [100 * float(image_emb[i] @ text_emb[i]) for i in range(3)], abs=1e-3)
    summary = scores["summary"]
    assert summary["clip_t_mean"] == pytest.approx(np.mean([p["clip_t"] for p in scores["panels"]]), abs=1e-3)
    assert 0 < summary["consistency"] <= 1 and 0 < summary["subject_consistency"] <= 1
    assert summary["subject_crop"] == "center"
    assert scores["aesthetic"]["available"] is False and summary["aesthetic_mean"] is None
    assert all(p["aesthetic"] is None for p in scores["panels"])
    for text in ("CLIP-T", "panel-01.png", "mean CLIP-T", f"{summary['clip_t_mean']:.2f}", "consistency",
                 "subject crop: center", "n/a", "scores.json"):
        assert text in result.out, text
    assert "English CLIP" in result.err  # Chinese prompts read by an English CLIP are flagged


def test_eval_with_aesthetic_head_and_annotated_storyboard(cli, run_copy, tiny_clip, tmp_path):
    import torch

    head = {f"layers.{i}.weight": torch.randn(w, n) * 0.3 for i, (w, n) in zip((0, 2, 4, 6, 7), ((8, 16), (8, 8), (4, 8), (2, 4), (1, 2)))}
    head.update({f"layers.{i}.bias": torch.full((w,), 5.0 if w == 1 else 0.0) for i, w in zip((0, 2, 4, 6, 7), (8, 8, 4, 2, 1))})
    save_file(head, str(tmp_path / "head.safetensors"), metadata={"clip_model": str(tiny_clip)})
    result = cli("eval", run_copy, "--clip", tiny_clip, "--aesthetic", tmp_path / "head.safetensors", "--annotate")
    assert result.code == 0, result.err
    scores = _scores(run_copy)
    values = [p["aesthetic"] for p in scores["panels"]]
    assert all(isinstance(v, float) and np.isfinite(v) for v in values)
    assert scores["aesthetic"]["available"] is True and scores["aesthetic"]["layout"] == "mlp"
    assert f"{values[0]:.2f}" in result.out
    board = Image.open(run_copy / "storyboard_scored.png")
    plain = Image.open(run_copy / "storyboard.png")
    assert board.width == plain.width and board.height > plain.height  # score lines under each panel


def test_evaluate_run_falls_back_to_png_metadata_without_manifest(run_copy, tiny_clip):
    (run_copy / "manifest.json").unlink()
    run = read_run(run_copy)
    assert [p.prompt for p in run.panels][0] == "二次元,紫色长发少女,在练习室唱歌,水彩"
    scores = evaluate_run(run_copy, str(tiny_clip), write=False)
    assert len(scores.panels) == 3 and not (run_copy / "scores.json").exists()


def test_missing_clip_model_is_one_line(cli, run_copy):
    cli("eval", run_copy).error_line("openai/clip-vit-base-patch32", "hf download")
    assert not (run_copy / "scores.json").exists()


def test_bad_inputs_are_one_line_errors(cli, run_copy, tiny_clip, tmp_path):
    cli("eval", tmp_path / "nowhere", "--clip", tiny_clip).error_line("no such run folder")
    cli("eval", run_copy, "--clip", tiny_clip, "--aesthetic", tmp_path / "none.safetensors").error_line("no such file")
    (tmp_path / "head.pth").write_bytes(b"not really")
    cli("eval", run_copy, "--clip", tiny_clip, "--aesthetic", tmp_path / "head.pth").error_line("pickle", "--allow-pickle")
    (run_copy / "panel-02.png").write_bytes(b"")
    cli("eval", run_copy, "--clip", tiny_clip).error_line("panel-02.png")
    (run_copy / "panel-02.png").unlink()
    cli("eval", run_copy, "--clip", tiny_clip).error_line("panel-02.png", "missing")
    (run_copy / "manifest.json").write_text("{broken", encoding="utf-8")
    cli("eval", run_copy, "--clip", tiny_clip).error_line("manifest.json")


def test_compare_without_lora_in_the_run_says_so(cli, run_copy, tiny_clip):
    manifest = json.loads((run_copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["lora"] = None
    (run_copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    cli("eval", run_copy, "--clip", tiny_clip, "--compare").error_line("without a LoRA", "--lora")
