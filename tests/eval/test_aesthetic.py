"""Aesthetic predictor heads: LAION layouts load and compute, no weights means no score, no pickle."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from lorastory.models.aesthetic import build_head, load_aesthetic
from lorastory.models.clip import load_clip
from lorastory.errors import AestheticModelError
from lorastory.eval.report import load_scorers, score_images

# LAION's improved-aesthetic-predictor MLP (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear)
# at a tiny width: the same indices, layers.0/2/4/6/7.
MLP_INDICES = (0, 2, 4, 6, 7)
RELU_INDICES = (0, 3, 6, 9, 11)


def random_head(input_dim: int, indices=MLP_INDICES, widths=(32, 16, 8, 4, 1), seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state, size = {}, input_dim
    for index, width in zip(indices, widths):
        state[f"layers.{index}.weight"] = torch.randn(width, size, generator=generator) * 0.3
        state[f"layers.{index}.bias"] = torch.randn(width, generator=generator) * 0.1 + (5.0 if width == 1 else 0)
        size = width
    return state


def manual_mlp(state, embeddings, relu=False):
    x = embeddings
    keys = sorted({int(k.split(".")[1]) for k in state})
    for n, index in enumerate(keys):
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
        if relu and n < len(keys) - 1:
            x = torch.relu(x)
    return x.reshape(-1)


@pytest.fixture
def head_file(tmp_path, tiny_clip):
    path = tmp_path / "aesthetic.safetensors"
    dim = load_clip(str(tiny_clip)).embed_dim
    save_file(random_head(dim), str(path), metadata={"clip_model": str(tiny_clip)})
    return path


def test_mlp_head_on_clip_embeddings_matches_a_manual_forward(head_file, tiny_clip, noise_images, plain_clip):
    scorers = load_scorers(str(tiny_clip), head_file)
    images = noise_images(3)
    scores = score_images(scorers, images, ["a", "b", "c"])
    values = [p["aesthetic"] for p in scores["panels"]]
    image_emb, _, _ = plain_clip(tiny_clip, images, ["a", "b", "c"])
    expected = manual_mlp(random_head(image_emb.shape[1]), image_emb)
    assert values == pytest.approx([float(v) for v in expected], abs=1e-3)
    assert all(torch.isfinite(torch.tensor(values)))
    assert scores["summary"]["aesthetic_mean"] == pytest.approx(sum(values) / 3, abs=1e-3)
    assert scorers.aesthetic.describe()["layout"] == "mlp"


def test_relu_variant_and_linear_head(tmp_path, tiny_clip, noise_images):
    clip = load_clip(str(tiny_clip))
    emb = clip.image_embeddings(noise_images(2))
    relu = random_head(clip.embed_dim, RELU_INDICES)
    save_file(relu, str(tmp_path / "relu.safetensors"))
    predictor = load_aesthetic(tmp_path / "relu.safetensors")
    assert predictor.layout == "mlp_relu"
    assert predictor.score_embeddings(emb) == pytest.approx([float(v) for v in manual_mlp(relu, emb, relu=True)], abs=1e-4)
    linear = {"weight": torch.randn(1, clip.embed_dim), "bias": torch.tensor([4.5])}
    save_file(linear, str(tmp_path / "linear.safetensors"))
    predictor = load_aesthetic(tmp_path / "linear.safetensors")
    assert predictor.layout == "linear"
    assert predictor.score_embeddings(emb) == pytest.approx([float(v) for v in emb @ linear["weight"][0] + 4.5], abs=1e-4)


def test_without_weights_the_score_is_not_available(tiny_clip, noise_images):
    scorers = load_scorers(str(tiny_clip))
    scores = score_images(scorers, noise_images(2), ["a", "b"])
    assert [p["aesthetic"] for p in scores["panels"]] == [None, None]
    assert scores["summary"]["aesthetic_mean"] is None


def test_head_for_another_clip_size_is_refused(tmp_path, tiny_clip):
    save_file(random_head(768), str(tmp_path / "l14.safetensors"))
    with pytest.raises(AestheticModelError, match="768-d"):
        load_scorers(str(tiny_clip), tmp_path / "l14.safetensors", aesthetic_clip=str(tiny_clip))
    # Without --aesthetic-clip the 768-d head needs LAION's ViT-L/14, which is not here (offline).
    with pytest.raises(Exception, match="openai/clip-vit-large-patch14"):
        load_scorers(str(tiny_clip), tmp_path / "l14.safetensors")


def test_same_size_head_without_metadata_reuses_the_eval_clip_and_says_so(tmp_path, tiny_clip):
    save_file(random_head(load_clip(str(tiny_clip)).embed_dim), str(tmp_path / "bare.safetensors"))
    scorers = load_scorers(str(tiny_clip), tmp_path / "bare.safetensors")
    assert scorers.aesthetic_embedder is scorers.clip
    assert any("assumed" in note for note in scorers.notes)


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(AestheticModelError, match="no such file"):
        load_aesthetic(tmp_path / "nope.safetensors")
    save_file({"layers.0.weight": torch.zeros(4, 8), "layers.5.weight": torch.zeros(1, 4)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(AestheticModelError, match="indices"):
        load_aesthetic(tmp_path / "odd.safetensors")
    save_file({"something": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AestheticModelError, match="not an aesthetic head"):
        load_aesthetic(tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(AestheticModelError, match="unreadable"):
        load_aesthetic(tmp_path / "broken.safetensors")


def test_pickle_is_refused_unless_allowed_and_then_tensors_only(tmp_path, tiny_clip):
    state = random_head(16)
    torch.save(state, tmp_path / "head.pth")
    with pytest.raises(AestheticModelError, match="pickle"):
        load_aesthetic(tmp_path / "head.pth")
    assert load_aesthetic(tmp_path / "head.pth", allow_pickle=True).layout == "mlp"

    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"layers.0.weight": Exploit()}))
    with warnings.catch_warnings(), pytest.raises(AestheticModelError, match="tensors only"):
        warnings.simplefilter("ignore")  # torch notes the pickle protocol it did not expect
        load_aesthetic(tmp_path / "evil.pth", allow_pickle=True)
    assert not marker.exists()


def test_simple_aesthetics_predictor_folder_brings_its_own_vision_tower(tmp_path, tiny_clip, noise_images):
    """Data-Juicer's default predictor layout: CLIPVisionModelWithProjection + layers.* in one folder."""
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    full = CLIPModel.from_pretrained(tiny_clip)
    vision = CLIPVisionModelWithProjection(full.config.vision_config.__class__(**{
        **full.config.vision_config.to_dict(), "projection_dim": full.config.projection_dim}))
    vision.vision_model.load_state_dict(full.vision_model.state_dict())
    vision.visual_projection.load_state_dict(full.visual_projection.state_dict())
    folder = tmp_path / "predictor"
    vision.save_pretrained(folder)
    CLIPImageProcessor.from_pretrained(tiny_clip).save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    head = random_head(full.config.projection_dim)
    save_file({**weights, **head}, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "clip_vision_model"

    predictor = load_aesthetic(folder)
    assert predictor.embedder is not None and predictor.layout == "mlp"
    images = noise_images(2)
    emb = load_clip(str(tiny_clip)).image_embeddings(images)
    expected = manual_mlp(head, emb)
    got = predictor.score_embeddings(predictor.embedder.image_embeddings(images))
    assert got == pytest.approx([float(v) for v in expected], abs=1e-3)


def test_build_head_rejects_a_head_that_does_not_chain():
    state = random_head(16)
    state["layers.2.weight"] = torch.zeros(16, 7)
    with pytest.raises(AestheticModelError, match="chain"):
        build_head(state, "x")
