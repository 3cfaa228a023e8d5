"""``grid`` never writes over its inputs or a file it was not told to replace, refuses sizes it
cannot hold before allocating them, and turns every unreadable picture into one line naming it."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin, features

from lorastory.errors import ConfigError, DataError
from lorastory.generate.grid import MAX_BOARD_PIXELS, make_storyboard, parse_size
from lorastory.generate.pngmeta import read_parameters


pytestmark = pytest.mark.usefixtures("no_hang")  # a FIFO read by mistake fails the test instead of hanging it


def _png(path: Path, color=(200, 30, 30), size=(32, 32)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_bomb(path: Path) -> Path:
    """A valid PNG with a zTXt chunk that inflates past Pillow's MAX_TEXT_CHUNK, before the image data."""
    raw = _png(path).read_bytes()
    bomb = _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 4096)))
    end_of_ihdr = 8 + 25
    path.write_bytes(raw[:end_of_ihdr] + bomb + raw[end_of_ihdr:])
    return path


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say)."""
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.png").mkdir()
    (folder / "avif.png").write_bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + b"\0" * 200)
    good = _png(folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    broken = _png(folder / "broken.png").read_bytes()
    if features.check("avif"):  # a real AVIF named .png whose colour data is damaged: RuntimeError on decode
        Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "real.avif")
        broken = (folder / "real.avif").read_bytes()[:-40] + b"\xff" * 40
    (folder / "broken.png").write_bytes(broken)
    return {
        "broken-avif": (folder / "broken.png", "broken.png"),
        "fifo": (folder / "fifo.png", "not a regular file"),
        "dir": (folder / "dir.png", "not a regular file"),
        "avif": (folder / "avif.png", "avif.png"),
        "bomb": (_text_bomb(folder / "bomb.png"), "bomb.png"),
        "cut": (folder / "cut.png", "truncated"),
        "empty": (folder / "empty.png", "empty file"),
        "missing": (folder / "missing.png", "file not found"),
    }


@pytest.mark.parametrize("kind", ["fifo", "dir", "avif", "broken-avif", "bomb", "cut", "empty", "missing"])
def test_grid_names_an_unreadable_input_in_one_line(tmp_path, cli, kind):
    if kind == "broken-avif" and not features.check("avif"):
        pytest.skip("Pillow without AVIF")
    path, needle = _bad_inputs(tmp_path)[kind]
    good = _png(tmp_path / "ok.png")
    result = cli("grid", good, path, "--out", tmp_path / "board.png")
    result.error_line(path.name, needle)
    assert not (tmp_path / "board.png").exists()
    result = cli("grid", good, path, "--captions", "--out", tmp_path / "board.png")
    result.error_line(path.name)


@pytest.mark.parametrize("kind", ["fifo", "dir", "avif", "bomb", "cut", "empty"])
def test_read_parameters_never_crashes_or_blocks(tmp_path, kind):
    path, _ = _bad_inputs(tmp_path)[kind]
    with pytest.raises(DataError) as caught:
        read_parameters(path)
    assert path.name in str(caught.value) and "\n" not in str(caught.value)


def test_read_parameters_of_another_tools_odd_text_is_none_not_a_crash(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("lorastory", "[" * 100_000)
    info.add_text("parameters", "Steps: x, Size: 9x, Seed: " + "9" * 5000)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd.png", pnginfo=info)
    params = read_parameters(tmp_path / "odd.png")
    assert params is None or params.seed is None or isinstance(params.seed, int)


def test_grid_out_may_not_be_an_input_by_any_name(tmp_path, cli):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (0, 0, 200))
    before = a.read_bytes()
    os.symlink(a, tmp_path / "link.png")
    os.link(a, tmp_path / "hard.png")
    for out in (a, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "." / "a.png"):
        for extra in ([], ["--overwrite"]):
            cli("grid", a, b, "--out", out, *extra).error_line("is the input image 1")
    assert a.read_bytes() == before


def test_grid_replaces_an_existing_out_only_with_overwrite(tmp_path, cli):
    a = _png(tmp_path / "a.png")
    (tmp_path / "board.png").write_bytes(b"my old board")
    cli("grid", a, "--out", tmp_path / "board.png").error_line("already exists", "--overwrite")
    assert (tmp_path / "board.png").read_bytes() == b"my old board"
    assert cli("grid", a, "--out", tmp_path / "board.png", "--overwrite").code == 0
    assert Image.open(tmp_path / "board.png").size == (32, 32)
    (tmp_path / "folder.png").mkdir()
    cli("grid", a, "--out", tmp_path / "folder.png", "--overwrite").error_line("not a regular file")


def test_grid_out_that_cannot_be_written_is_one_line(tmp_path, cli):
    a = _png(tmp_path / "a.png")
    cli("grid", a, "--out", "/proc/self/board.png").error_line("/proc/self/board.png")
    cli("grid", a, "--out", tmp_path / "board.txt").error_line("unknown image extension")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--resize", "100000x100000"], "too large"),
        (["--resize", "0x10"], "--resize"),
        (["--resize", "-5x10"], "--resize"),
        (["--resize", "axb"], "--resize"),
        (["--resize", "10"], "--resize"),
        (["--resize", "1e3x10"], "--resize"),
        (["--resize", "99999999999999999999x1"], "--resize"),
        (["--cols", "0"], "cols must be at least 1"),
        (["--cols", "-3"], "cols must be at least 1"),
        (["--rows", "0"], "rows"),
        (["--spacing", "-1"], "spacing"),
        (["--spacing", "1000000"], "too large"),
        (["--rows", "100000000"], "too large"),
        (["--title", "\udcff"], "--title"),
    ],
)
def test_grid_sizes_are_checked_before_allocating(tmp_path, cli, args, needle):
    a = _png(tmp_path / "a.png")
    cli("grid", a, a, *args, "--out", tmp_path / "board.png").error_line(needle)
    assert not (tmp_path / "board.png").exists()


def test_board_size_is_checked_from_headers_before_decoding(tmp_path, monkeypatch):
    import lorastory.generate.grid as grid

    path = _png(tmp_path / "a.png")
    decoded = []
    monkeypatch.setattr(grid, "_load", lambda source, background: decoded.append(source))
    with pytest.raises(ConfigError, match="too large"):
        make_storyboard([path] * 4, cols=1, spacing=MAX_BOARD_PIXELS // 8)
    assert decoded == []


def test_parse_size():
    assert parse_size("1024x2048") == (1024, 2048)
    assert parse_size(" 64 X 32 ") == (64, 32)
    with pytest.raises(ConfigError, match="too large"):
        parse_size("20000x20000")
