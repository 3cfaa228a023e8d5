"""Bad training inputs end in one line before anything loads, or in counted skips: never a traceback.

Settings are checked where they enter (the config), outputs before the model loads, and bad
rows of a training folder are skipped with their line number and the reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastory.errors import ConfigError, DataError
from lorastory.models.lora import LoraSpec
from lorastory.train.config import MAX_RANK, TrainConfig
from lorastory.train.data import Placement, TrainItem, load_pixels, read_train_folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "This is a bug" not in err
    return lines[0]


# --- 1. settings -------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "field"), [
    (["--rank", "2048"], "rank"), (["--rank", "2000"], "rank"), (["--rank", "0"], "rank"),
    (["--seed", "-5"], "seed"), (["--seed", str(2**32)], "seed"), (["--seed", str(2**64)], "seed"),
    (["--alpha", "nan"], "alpha"), (["--alpha", "inf"], "alpha"), (["--alpha", "0"], "alpha"),
    (["--lr", "nan"], "lr"), (["--lr", "-inf"], "lr"), (["--lr", "0"], "lr"), (["--lr", "-1e-4"], "lr"),
    (["--resolution", "0"], "resolution"), (["--resolution", "-64"], "resolution"),
    (["--resolution", "100000"], "resolution"), (["--resolution", "100"], "resolution"),
    (["--batch-size", "0"], "batch_size"), (["--gradient-accumulation", "0"], "gradient_accumulation"),
    (["--snr-gamma", "nan"], "snr_gamma"), (["--noise-offset", "inf"], "noise_offset"),
    (["--family", "sd3"], "family"), (["--max-steps", "0"], "max_steps"),
    (["--lora-dropout", "1"], "lora_dropout"), (["--optimizer", "prodigy", "--prodigy-d-coef", "nan"], "prodigy_d_coef"),
    (["--adafactor-warmup-init"], "adafactor.warmup_init is set but the optimizer is adamw"),
    (["--ema-decay", "0.9"], "ema_decay is set but ema is off"), (["--ema", "--ema-every", "0"], "ema_every"),
])
def test_bad_settings_are_refused_before_the_model_loads(cli, tmp_path, style_train_folder, flags, field):
    """A missing model would fail to load: the setting's error must come first, and fast."""
    started = time.monotonic()
    result = cli("train", "--model", tmp_path / "no-such-model", "--data", style_train_folder,
                 "--out", tmp_path / "run", *flags)
    assert result.code == 1
    line = _one_error_line(result.err)
    assert field in line and "no-such-model" not in line
    assert time.monotonic() - started < 10
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("yaml_text", "field"), [
    ("target_modules: []\n", "target_modules"), ("target_modules: ['']\n", "target_modules"),
    ("max_grad_norm: .nan\n", "max_grad_norm"), ("weight_decay: -1\n", "weight_decay"),
    ("validation_cfg: .inf\n", "validation_cfg"), ("lora_dropout: 1.0\n", "lora_dropout"),
    ("cache_dir: ''\n", "cache_dir"),
    ("lora:\n  rank: 2048\n", "lora.rank"), ("lora:\n  dropout: 1.0\n", "lora.dropout"), ("lora: {rnak: 8}\n", "lora.rnak"),
    ("rank: 8\nlora: {rank: 4}\n", "rank and lora.rank are both given"),
    ("prodigy: {d_coef: 2}\n", "prodigy.d_coef is set but the optimizer is adamw"),
    ("optimizer: prodigy\nprodigy: {d_coef: 0}\n", "prodigy.d_coef"),
    ("optimizer: adafactor\nadafactor: {warmup_init: true}\n", "adafactor.warmup_init needs adafactor.relative_step"),
    ("optimizer: adafactor\nadafactor: {relative_step: true}\nlr_scheduler: cosine\n", "use lr_scheduler: constant"),
    ("optimizer: lion\n", "optimizer"), ("ema_decay: 0.99\n", "ema_decay is set but ema is off"),
    ("ema: true\nema_decay: 1.0\n", "ema_decay"), ("ema: true\nema_every: 0\n", "ema_every"),
])
def test_bad_settings_in_a_config_file_name_the_field(cli, tmp_path, style_train_folder, yaml_text, field):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-model'}\ndata: {style_train_folder}\nout: {tmp_path / 'run'}\n"
                      + yaml_text, encoding="utf-8")
    result = cli("train", config)
    assert result.code == 1
    line = _one_error_line(result.err)
    assert field in line and "no-such-model" not in line


def test_the_lora_shape_is_the_lora_spec_given_flat_or_nested():
    """One definition (LoraSpec, nested as ``lora``); the flat keys of older files mean the same, edges included."""
    base = dict(model="m", data="d", out="o")
    for rank in (1, MAX_RANK):
        flat = TrainConfig.from_dict({**base, "rank": rank, "lora_dropout": 0.5})
        nested = TrainConfig.from_dict({**base, "lora": {"rank": rank, "dropout": 0.5}})
        assert flat == nested and isinstance(flat.lora, LoraSpec) and flat.lora.rank == rank
    for bad in (dict(rank=MAX_RANK + 1), dict(rank=0), dict(target_modules=[]), dict(target_modules=[" "]),
                dict(alpha=0.0), dict(alpha=float("nan")), dict(lora_dropout=1.0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig.from_dict({**base, **bad})
        spec_values = {{"lora_dropout": "dropout"}.get(k, k): v for k, v in bad.items()}
        with pytest.raises(ConfigError):
            TrainConfig.from_dict({**base, "lora": spec_values})


def test_seed_edges_are_accepted():
    assert TrainConfig(model="m", data="d", out="o", seed=2**32 - 1).seed == 2**32 - 1
    assert TrainConfig(model="m", data="d", out="o", seed=0).seed == 0


# --- 7. outputs --------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_are_refused_first(cli, tmp_path, style_train_folder):
    before = _snapshot(style_train_folder)
    missing = tmp_path / "no-such-model"
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me", encoding="utf-8")
    cases = [
        (["--out", a_file], "is a file"),
        (["--out", tmp_path / "run", "--cache-dir", a_file], "is a file"),
        (["--out", tmp_path / "run", "--cache-dir", "/proc/lorastory-cache"], "cannot be written"),
        (["--out", "/proc/lorastory-run"], "cannot be written"),
        (["--out", a_file / "below"], "cannot be written"),
    ]
    for flags, expected in cases:
        result = cli("train", "--model", missing, "--data", style_train_folder, *flags)
        assert result.code == 1, flags
        line = _one_error_line(result.err)
        assert expected in line and "no-such-model" not in line, (flags, line)
    assert a_file.read_text(encoding="utf-8") == "keep me"
    assert _snapshot(style_train_folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no run folder, no write-test left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(cli, tmp_path, style_train_folder):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("train", "--model", tmp_path / "m", "--data", style_train_folder, "--out", locked / "run")
    finally:
        locked.chmod(0o755)
    assert result.code == 1 and "cannot be written" in _one_error_line(result.err)


def test_read_only_file_system_is_refused(cli, tmp_path, style_train_folder):
    """/sys is mounted read-only in containers and refuses new folders even to root."""
    target = Path("/sys/lorastory-run")
    if os.statvfs("/sys").f_flag & os.ST_RDONLY == 0:
        pytest.skip("/sys is not a read-only file system here")
    result = cli("train", "--model", tmp_path / "m", "--data", style_train_folder, "--out", target)
    assert result.code == 1 and "cannot be written" in _one_error_line(result.err)
    assert not target.exists()


def test_outputs_inside_inputs_are_refused(cli, tmp_path, style_train_folder, tiny_model_path):
    model = tiny_model_path("sd15")
    data_before, model_before = _snapshot(style_train_folder), _snapshot(model)
    linked = tmp_path / "link-to-data"
    linked.symlink_to(style_train_folder)
    cases = [
        (["--out", style_train_folder], "is the input --data"),
        (["--out", linked], "is the input --data"),
        (["--out", style_train_folder / "images" / "run"], "lies inside the input --data"),
        (["--out", style_train_folder.parent], "contains the input --data"),
        (["--out", model / "run"], "lies inside the input --model"),
        (["--out", model], "is the input --model"),
        (["--out", tmp_path / "run", "--cache-dir", style_train_folder], "--cache-dir"),
        (["--out", tmp_path / "run", "--cache-dir", linked], "--cache-dir"),
        (["--out", tmp_path / "run", "--cache-dir", model], "--cache-dir"),
    ]
    for flags, expected in cases:
        result = cli("train", "--model", model, "--data", style_train_folder, *flags)
        assert result.code == 1, flags
        assert expected in _one_error_line(result.err), (flags, result.err)
    assert _snapshot(style_train_folder) == data_before and _snapshot(model) == model_before
    assert not (tmp_path / "run").exists()


# --- 3. training data --------------------------------------------------------------------


def _image(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (72, 64), colour).save(path)


def test_bad_jsonl_rows_are_skipped_with_line_and_reason(tmp_path):
    folder = tmp_path / "data"
    _image(folder / "a.png")
    _image(folder / "b.png")
    os.mkfifo(folder / "fifo.png")
    lines = [
        json.dumps({"file_name": "a.png", "text": "good one"}),        # 1
        json.dumps(["a.png", "an array"]),                              # 2
        "42",                                                           # 3
        json.dumps({"images": 7, "text": "images a number"}),           # 4
        json.dumps({"file_name": "", "text": "empty name"}),            # 5
        json.dumps({"file_name": ".", "text": "dot"}),                  # 6
        json.dumps({"file_name": "a\u0000.png", "text": "nul in name"}),  # 7
        '{"file_name": "a.png", "text": "lone \\ud800 surrogate"}',     # 8
        json.dumps({"file_name": "fifo.png", "text": "a fifo"}),        # 9
        json.dumps({"images": ["b.png"], "text": "nul \u0000 caption"}),  # 10
        "{not json",                                                    # 11
        "[" * 100_000 + "]" * 100_000,                                  # 12
        json.dumps({"images": ["b.png"], "text": "good two"}),          # 13
    ]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    items, problems = read_train_folder(folder)
    assert time.monotonic() - started < 10  # the FIFO is refused, not opened
    assert [i.caption for i in items] == ["good one", "good two"]
    skipped = {int(p.split(" line ")[1].split(":")[0]) for p in problems}
    assert skipped == set(range(2, 13))
    by_line = {int(p.split(" line ")[1].split(":")[0]): p for p in problems}
    assert "not an object" in by_line[2] and "not an object" in by_line[3]
    assert "names no file" in by_line[6] and "NUL" in by_line[7] and "not valid UTF-8" in by_line[8]
    assert "fifo.png" in by_line[9] and "NUL" in by_line[10]


def test_bad_csv_rows_are_skipped_and_long_captions_read(tmp_path):
    folder = tmp_path / "data"
    _image(folder / "a.png")
    _image(folder / "b.png")
    long_caption = "x" * 150_000
    raw = (b"file_name,text\r\n"
           b"a.png,fine\r\n"
           b"b.png,caf\xe9 latin-1\r\n"            # line 3: not UTF-8
           + f"b.png,{long_caption}\r\n".encode()  # line 4: 150 KB field
           + b",no name\r\n"                        # line 5
           b"missing.png,gone\r\n")                 # line 6
    (folder / "metadata.csv").write_bytes(raw)
    items, problems = read_train_folder(folder)
    assert [len(i.caption) for i in items] == [4, 150_000]
    assert len(problems) == 3
    assert problems[0].startswith("metadata.csv line 3") and "UTF-8" in problems[0]
    assert problems[1].startswith("metadata.csv line 5") and "names no file" in problems[1]
    assert problems[2].startswith("metadata.csv line 6") and "missing.png" in problems[2]


def test_duplicate_csv_column_and_no_usable_row_are_one_line_errors(tmp_path):
    folder = tmp_path / "data"
    _image(folder / "a.png")
    (folder / "metadata.csv").write_text("file_name,text,text\na.png,one,two\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: column 'text' appears 2 times"):
        read_train_folder(folder)
    (folder / "metadata.csv").write_text("file_name,text\n.,x\nnope.png,y\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable training images"):
        read_train_folder(folder)


def test_cli_trains_on_the_good_rows_and_warns_about_empty_captions(cli, tmp_path, tiny_model_path):
    folder = tmp_path / "data"
    rows = []
    for index in range(4):
        _image(folder / f"{index}.png", (40 * index, 100, 200))
        rows.append(json.dumps({"file_name": f"{index}.png", "text": ""}))
    rows += [json.dumps([1, 2]), json.dumps({"images": 3}), json.dumps({"file_name": ".", "text": "x"}),
             json.dumps({"file_name": "[red]gone[/].png", "text": "markup-like name"})]
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    before = _snapshot(folder)
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", folder, "--out", tmp_path / "run",
                 "--resolution", "64", "--rank", "2", "--max-steps", "1", "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    for line in (5, 6, 7, 8):
        assert f"skipped metadata.jsonl line {line}:" in result.err
    assert "[red]gone[/].png" in result.err  # printed as text, not read as console markup
    assert "skipped 4 row(s)" in result.err and "training on 4 image(s)" in result.err
    assert "captions all empty" in result.err
    assert (tmp_path / "run" / "lora.safetensors").is_file()
    assert _snapshot(folder) == before


def test_float_tiff_training_image_is_not_black(tmp_path):
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    path = tmp_path / "float.tif"
    Image.fromarray(ramp, mode="F").save(path)
    item = TrainItem(str(path), "x", (64, 64))
    pixels = load_pixels(item, Placement((64, 64), (0, 0), (64, 64)))
    assert pixels.shape == (3, 64, 64)
    assert float(pixels.max()) > 0.5 and float(pixels.min()) < -0.5  # a ramp, not a black picture


def test_csv_nul_and_unterminated_quote_are_reported_not_merged(tmp_path):
    folder = tmp_path / "data"
    _image(folder / "a.png")
    (folder / "metadata.csv").write_bytes(b'file_name,text\na.png,"two\nlines"\na\x00.png,nul\na.png,"bad"x\n'
                                          b'a.png,"left open\na.png,swallowed?\n')
    items, problems = read_train_folder(folder)
    assert [i.caption for i in items] == ["two lines"]
    assert problems == ["metadata.csv line 4: file name holds a NUL byte",
                        "metadata.csv line 5: unreadable csv row (',' expected after '\"')",
                        "metadata.csv lines 6-7: unreadable csv row (unexpected end of data)"]
