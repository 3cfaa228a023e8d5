"""PNGs encoded in parallel strips hold what Pillow's would: the same pixels and text chunks, read back as
A1111 / ComfyUI read them; writes stay atomic, and a failed write surfaces."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lorastory.generate.grid import save_storyboard
from lorastory.generate.pngencode import adler32_combine, can_encode, encode_png
from lorastory.generate.pngmeta import (
    PNG_COMPRESS_LEVEL,
    GenerationParams,
    format_parameters,
    png_info,
    read_parameters,
    save_png_with_parameters,
)
from lorastory.generate.writer import PictureWriter

PARAMS = GenerationParams(prompt="二次元,紫色长发少女 (best quality)", negative_prompt="丑陋、变形", steps=50,
                          sampler="Euler", cfg_scale=4.0, seed=7, width=1024, height=1024, model="Kolors-diffusers")


def _picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth colour with some grain and a flat block: every PNG filter gets chosen somewhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(1, width), y * 255 / max(1, height), (x + y) % 256], -1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    pixels[: height // 3, : width // 3] = (200, 30, 90)
    pixels[height // 2 :: 7] = rng.integers(0, 256, pixels[height // 2 :: 7].shape, dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG as a strict reader walks them (every CRC checked)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def _pillow_png(image: Image.Image, info: PngImagePlugin.PngInfo | None, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level, **({"pnginfo": info} if info else {}))
    return buffer.getvalue()


def _same_as_pillow(data: bytes, image: Image.Image, info: PngImagePlugin.PngInfo | None, level: int) -> None:
    ours, theirs = _chunks(data), _chunks(_pillow_png(image, info, level))
    assert [c for c in ours if c[0] != b"IDAT"] == [c for c in theirs if c[0] != b"IDAT"]  # IHDR, text, IEND
    kinds = [kind for kind, _ in ours]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    zlib.decompress(b"".join(body for kind, body in ours if kind == b"IDAT"))  # one zlib stream, Adler-32 right
    with Image.open(io.BytesIO(data)) as back:
        back.load()
        assert back.mode == image.mode and back.size == image.size
        assert np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
@pytest.mark.parametrize("size", [(1, 1), (37, 150), (300, 257)])
def test_strips_on_threads_give_pillows_pixels_and_chunks(mode, size):
    image = _picture(*size, mode=mode, seed=size[0])
    info = png_info(PARAMS)
    with ThreadPoolExecutor(3) as pool:
        for level, strips in [(1, 1), (1, 4), (6, 3), (0, 2), (-1, 2)]:
            _same_as_pillow(encode_png(image, info, level, pool, strips), image, info, level)


def test_a_panel_keeps_the_parameters_a1111_and_comfyui_read(tmp_path):
    image = _picture(320, 200)
    path = tmp_path / "panel-01.png"
    save_png_with_parameters(image, path, PARAMS)
    data = path.read_bytes()
    _same_as_pillow(data, image, png_info(PARAMS), PNG_COMPRESS_LEVEL)  # what the run wrote with Pillow before
    with Image.open(path) as opened:  # A1111: image.info["parameters"]; ComfyUI: the PNG's text chunks
        assert opened.info["parameters"] == format_parameters(PARAMS)
        assert opened.text["parameters"] == format_parameters(PARAMS)
    assert read_parameters(path) == PARAMS
    assert [p.name for p in tmp_path.iterdir()] == ["panel-01.png"]  # written atomically: no temporary left


def test_files_are_about_as_small_as_pillows():
    image = _picture(512, 512)
    ours = len(encode_png(image, None, PNG_COMPRESS_LEVEL, None, 1))
    split = len(encode_png(image, None, PNG_COMPRESS_LEVEL, ThreadPoolExecutor(2), 8))
    pillow = len(_pillow_png(image, None, PNG_COMPRESS_LEVEL))
    assert ours <= 1.03 * pillow and split <= 1.03 * pillow, (ours, split, pillow)


def test_pictures_pillow_must_write_still_get_written_by_it(tmp_path):
    tagged = _picture(40, 30)
    tagged.info["dpi"] = (300, 300)
    palette = _picture(40, 30).convert("P")
    odd = PngImagePlugin.PngInfo()
    odd.add(b"prVt", b"a private chunk")
    assert not can_encode(tagged) and not can_encode(palette) and not can_encode(_picture(4, 4), odd)
    for number, image in enumerate([tagged, palette, _picture(40, 30, "I;16")]):
        path = tmp_path / f"{number}.png"
        save_png_with_parameters(image, path, PARAMS)
        assert read_parameters(path) == PARAMS
        with Image.open(path) as back:
            assert np.array_equal(np.asarray(back), np.asarray(image))


def test_adler32_of_pieces_combines_to_the_whole():
    data = np.random.default_rng(1).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    for cuts in [(0,), (1,), (65521,), (70_000, 131_042), (200_003,)]:
        edges = [0, *cuts, len(data)]
        checksum = 1
        for start, stop in zip(edges[:-1], edges[1:]):
            checksum = adler32_combine(checksum, zlib.adler32(data[start:stop]), stop - start)
        assert checksum == zlib.adler32(data)


def test_a_storyboard_on_a_writers_threads_is_the_same_picture(tmp_path):
    panels = [_picture(96, 64, seed=i) for i in range(4)]
    with PictureWriter(workers=3) as writer:
        board = save_storyboard(panels, tmp_path / "threads.png", cols=2, title="故事", captions=["一", None, "three", ""],
                                compress_level=PNG_COMPRESS_LEVEL, writer=writer)
    inline = save_storyboard(panels, tmp_path / "inline.png", cols=2, title="故事", captions=["一", None, "three", ""],
                             compress_level=6)
    title = PngImagePlugin.PngInfo()
    title.add_text("Title", "故事")
    _same_as_pillow((tmp_path / "threads.png").read_bytes(), board, title, PNG_COMPRESS_LEVEL)
    _same_as_pillow((tmp_path / "inline.png").read_bytes(), inline, title, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inline.png", "threads.png"]


def test_a_failed_write_is_raised_after_the_others_finish_and_an_error_cancels_the_rest(tmp_path):
    writer = PictureWriter(workers=2)
    written: list[int] = []

    def write(number: int) -> None:
        if number == 1:
            raise OSError(28, "No space left on device")
        written.append(number)

    for number in range(4):
        writer.submit(write, number)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    assert sorted(written) == [0, 2, 3]

    with pytest.raises(RuntimeError), PictureWriter(workers=1) as writer:
        writer.submit(threading.Event().wait, 0.2)  # the one thread busy for a moment
        writer.submit(written.append, 99)  # queued behind it: cancelled when the block fails
        raise RuntimeError("the render failed")
    assert 99 not in written
