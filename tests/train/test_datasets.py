"""Several datasets, repeats, regularization images and training-time captions, on a tiny model."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lorastory.train.step as step_module
import lorastory.train.trainer as trainer_module
from lorastory.train.captions import split_tags
from lorastory.train.config import TrainConfig
from lorastory.train.order import draw_sample
from lorastory.train.trainer import train


def _folder(root: Path, name: str, count: int, colour: int, caption: str) -> Path:
    """``count`` 80x72 pictures of one colour, captioned ``caption`` with the picture's number as a last tag."""
    folder = root / name
    folder.mkdir()
    rng = np.random.default_rng(colour)
    rows = []
    for index in range(count):
        pixels = np.full((72, 80, 3), colour, dtype=np.uint8) + rng.integers(0, 40, (72, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        rows.append((f"{index}.png", f"{caption}, picture {index}"))
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("file_name", "text"), *rows])
    return folder


class Spy:
    """Records what each training step drew: its pictures (folder name, file) and the caption keys it loaded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pictures: list[list[tuple[str, str]]] = []
        self.keys: list[str] = []
        self.examples: list = []
        real_inputs, real_text = trainer_module.step_inputs, step_module._batch_text

        def inputs(indices, weights, scale, epoch, examples, *args, **kwargs):
            self.examples = examples
            batch = [examples[draw_sample(i, len(examples))].item.path for i in indices]
            self.pictures.append([(Path(p).parent.name, Path(p).name) for p in batch])
            return real_inputs(indices, weights, scale, epoch, examples, *args, **kwargs)

        def text(keys, cache):
            self.keys += keys
            return real_text(keys, cache)

        monkeypatch.setattr(trainer_module, "step_inputs", inputs)
        monkeypatch.setattr(step_module, "_batch_text", text)


def _base(model: Path, out: Path, **values) -> dict:
    return dict(model=str(model), out=str(out), resolution=64, rank=2, alpha=2.0, lr=1e-3, seed=4,
                gradient_checkpointing=False, **values)


@pytest.mark.slow
def test_caption_dropout_trigger_and_shuffle_change_what_is_encoded(tiny_model_path, tmp_path, monkeypatch):
    data = _folder(tmp_path, "a", 4, 200, "striped, red, cat, garden")
    spy = Spy(monkeypatch)
    messages: list[str] = []
    config = TrainConfig(**_base(tiny_model_path("sd15"), tmp_path / "run", data=str(data), max_steps=6,
                                 batch_size=4, trigger_word="sks", caption_dropout=0.5, shuffle_tags=True,
                                 keep_tags=1, caption_variants=3))
    train(config, say=messages.append)
    texts = {key: text for e in spy.examples for key, text in zip(e.text_keys, e.texts)}
    variants = len(texts)
    assert 4 < variants <= 12  # up to 3 shuffles of each of the 4 captions
    assert any(f"{variants + 1} caption(s) encoded" in m for m in messages)  # + the empty prompt, once
    empty = spy.examples[0].empty_key
    assert len(spy.keys) == 24
    assert 0.25 <= spy.keys.count(empty) / len(spy.keys) <= 0.75  # about the dropout rate (a seeded run)
    trained = [texts[key] for key in spy.keys if key != empty]
    assert all(split_tags(t)[:2] == ["sks", "striped"] for t in trained)  # trigger first, then the kept tag
    assert len(set(trained)) > 4  # shuffled versions were used


@pytest.mark.slow
def test_repeats_datasets_and_regularization_images(tiny_model_path, tmp_path, monkeypatch):
    a = _folder(tmp_path, "a", 3, 200, "striped")
    b = _folder(tmp_path, "b", 2, 60, "dotted")
    reg = _folder(tmp_path, "reg", 2, 120, "a picture")
    file = tmp_path / "train.yaml"
    file.write_text(
        f"model: {tiny_model_path('sd15')}\nout: {tmp_path / 'run'}\nresolution: 64\nrank: 2\nbatch_size: 1\n"
        "gradient_checkpointing: false\nprior_loss_weight: 0\ntrigger_word: sks\ndatasets:\n"
        f"  - {{folder: {a}, repeats: 2}}\n  - {{folder: {b}}}\n"
        f"  - {{folder: {reg}, repeats: 2, is_regularization: true}}\n", encoding="utf-8")
    spy = Spy(monkeypatch)
    messages: list[str] = []
    result = train(TrainConfig.from_yaml(file), say=messages.append)
    assert result.steps == 12  # one epoch: 3x2 + 2x1 + 2x2 draws, one a step
    counts = Counter(picture for step in spy.pictures for picture in step)
    assert counts == {("a", "0.png"): 2, ("a", "1.png"): 2, ("a", "2.png"): 2, ("b", "0.png"): 1, ("b", "1.png"): 1,
                      ("reg", "0.png"): 2, ("reg", "1.png"): 2}
    assert any(f"{reg}: 2 image(s) x 2 repeat(s) = 4 per epoch (loss weight 0, regularization)" in m for m in messages)
    # prior_loss_weight 0: the regularization steps add nothing to the loss, the others do.
    for step, loss in zip(spy.pictures, result.losses):
        assert (loss == 0.0) == (step[0][0] == "reg"), (step, loss)
    # The trigger word goes on the training captions, not on the regularization pictures'.
    for example in spy.examples:
        assert all(t.startswith("sks, ") != (Path(example.item.path).parent.name == "reg") for t in example.texts)


def _two_examples(tmp_path: Path, config: TrainConfig) -> tuple[list, object]:
    """An example of each of the config's two datasets (one picture, cached latents and captions)."""
    from lorastory.train.cache import TensorCache
    from lorastory.train.data import TrainItem, place
    from lorastory.train.encode import make_example
    from lorastory.train.plan import Planned

    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    datasets = config.resolved_datasets()
    item = TrainItem(str(image), "a cat, on a mat, in the sun", (64, 64))
    planned = [Planned(item, place(item, (64, 64), True, False, None), index) for index in (0, 1)]
    examples = [make_example(p, datasets[p.dataset], "vae", "text", config.seed) for p in planned]
    cache = TensorCache(tmp_path / "cache")
    for example in examples:
        cache.save(example.latent_key, {"latents": torch.randn(4, 8, 8)})
        for key in (*example.text_keys, example.empty_key):
            cache.save(key, {"prompt_embeds": torch.randn(7, 16)})
    return examples, cache


def test_regularization_loss_weight_in_the_loss(tmp_path):
    """A batch of a normal and a regularization picture: loss = mean(1·mse_a + weight·prior·mse_reg)."""
    from diffusers import DDPMScheduler

    from lorastory.train.step import step_inputs, step_loss

    config = TrainConfig(model="m", out=str(tmp_path / "o"), seed=2, prior_loss_weight=0.5,
                         datasets=[{"folder": "a"}, {"folder": "r", "is_regularization": True, "weight": 0.5}])
    assert [d.loss_weight for d in config.resolved_datasets()] == [1.0, 0.25]
    examples, cache = _two_examples(tmp_path, config)

    class Zero(torch.nn.Module):
        def forward(self, noisy, timesteps, text, add_time_ids, dtype, captions=None):
            return torch.zeros_like(noisy)

    scheduler = DDPMScheduler()
    inputs = step_inputs([0, 1], [1.0, 1.0], 0.5, 0, examples, cache, scheduler, config, live_text=False)
    loss = step_loss(inputs, Zero(), scheduler, config, torch.device("cpu"), torch.float32)
    mse = inputs.target.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(loss, 0.5 * (mse[0] + 0.25 * mse[1]))
    assert not torch.allclose(loss, mse.mean())


def test_live_captions_when_the_text_encoder_trains(tmp_path):
    """With --train-text-encoder the step gets caption texts: dropped ones empty, the others shuffled fresh."""
    from diffusers import DDPMScheduler

    from lorastory.train.step import step_inputs

    config = TrainConfig(model="m", out=str(tmp_path / "o"), seed=2, trigger_word="sks", caption_dropout=0.5,
                         shuffle_tags=True, keep_tags=1, train_text_encoder=True,
                         datasets=[{"folder": "a"}, {"folder": "r", "is_regularization": True}])
    examples, cache = _two_examples(tmp_path, config)
    draws = list(range(60))
    inputs = step_inputs(draws, [1.0] * 60, 1 / 60, 0, examples, cache, DDPMScheduler(), config, live_text=True)
    assert inputs.text is None and len(inputs.captions) == 60
    assert 0.3 < inputs.captions.count("") / 60 < 0.7
    ours = [c for d, c in zip(draws, inputs.captions) if c and d % 2 == 0]
    reg = [c for d, c in zip(draws, inputs.captions) if c and d % 2 == 1]
    assert all(split_tags(c)[:2] == ["sks", "a cat"] for c in ours) and len(set(ours)) > 1
    assert all(split_tags(c)[0] == "a cat" for c in reg)  # no trigger word on regularization pictures


def _same_lora(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_resume_is_bit_identical_with_every_new_option(tiny_model_path, tmp_path, cli):
    """Datasets, captions, a LoRA variant, EMA and Prodigy all at once (issue 17): a resume ends bit-identical."""
    a = _folder(tmp_path, "a", 3, 200, "striped, red, cat, garden")
    reg = _folder(tmp_path, "reg", 2, 120, "a picture, of a cat")
    listed = tmp_path / "datasets.yaml"
    listed.write_text(
        f"- {{folder: {a}, repeats: 2, caption_prefix: anime, caption_suffix: best quality}}\n"
        f"- {{folder: {reg}, is_regularization: true, weight: 0.5, resolution: 96, caption_dropout: 0.5}}\n",
        encoding="utf-8")
    run = tmp_path / "run"
    args = ["--model", tiny_model_path("sd15"), "--dataset", listed, "--out", run, "--resolution", "64",
            "--rank", "2", "--alpha", "2", "--batch-size", "2", "--max-steps", "4", "--checkpoint-every", "2",
            "--seed", "9", "--no-gradient-checkpointing", "--random-flip", "--random-crop", "--trigger-word", "sks",
            "--caption-dropout", "0.3", "--shuffle-tags", "--keep-tags", "1", "--caption-variants", "3",
            "--prior-loss-weight", "0.5", "--network", "loha", "--ema", "--ema-decay", "0.9", "--optimizer", "prodigy",
            "--lr", "1"]
    result = cli("train", *args)
    assert result.code == 0, result.err
    written = TrainConfig.from_yaml(run / "config.yaml")
    assert [(d.repeats, d.is_regularization, d.resolution) for d in written.datasets] == [(2, False, None),
                                                                                           (None, True, 96)]
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for name in ("lora.safetensors", "lora_ema.safetensors"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    again = cli("train", resumed / "config.yaml", "--out", resumed, "--resume")
    assert again.code == 0, again.err
    assert "resumed from step-000002" in again.err
    assert any("hada_w1_a" in key for key in load_file(str(run / "lora.safetensors")))
    assert _same_lora(resumed / "lora.safetensors", run / "lora.safetensors")
    assert _same_lora(resumed / "lora_ema.safetensors", run / "lora_ema.safetensors")
    assert not _same_lora(run / "lora_ema.safetensors", run / "lora.safetensors")


def test_dataset_options_and_their_errors(tmp_path, cli):
    a, b = _folder(tmp_path, "a", 1, 10, "x"), _folder(tmp_path, "b", 1, 20, "y")
    listed = tmp_path / "more.json"
    listed.write_text(f'[{{"folder": "{b}", "is_regularization": true, "weight": 2}}]', encoding="utf-8")
    from lorastory.train.datasets import parse_dataset_options

    assert parse_dataset_options([f"{a}:3", str(listed), str(b)]) == [
        {"folder": str(a), "repeats": 3}, {"folder": str(b), "is_regularization": True, "weight": 2}, {"folder": str(b)}]
    base = ["train", "--model", "m", "--out", tmp_path / "o"]
    cli(*base, "--data", a, "--dataset", b).error_line("give data (one training folder) or datasets (several), not both")
    cli(*base).error_line("needs data (a training folder) or datasets (several)")
    cli(*base, "--dataset", tmp_path / "none.yaml").error_line("none.yaml: no such file")
    (tmp_path / "bad.yaml").write_text("folder: a\n", encoding="utf-8")
    cli(*base, "--dataset", tmp_path / "bad.yaml").error_line("expected a list of datasets")
    cli(*base, "--dataset", f"{a}:0").error_line("repeats")
    cli(*base, "--dataset", tmp_path / "nothing").error_line("no metadata.csv")
    cli(*base, "--data", a, "--caption-dropout", "1.5").error_line("caption_dropout")
