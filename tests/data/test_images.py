"""probe_image / load_rgb on real files: every bad case gives a BadImageError with
a reason a user can act on; every odd-but-valid mode gives correct 8-bit RGB."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lorastory.images import ImageInfo, is_image_file, load_rgb, probe_image
from lorastory.errors import BadImageError, DataError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel, expected, tol=6):
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def _noisy_jpeg(path, size=(64, 64), seed=0, **save_args):
    """A JPEG whose entropy-coded data is large enough to cut through the middle of it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=90, **save_args)
    return path


def _halves(mode, size, left, right):
    """An image whose left half is ``left`` and right half is ``right``."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bilevel_png(path, width, height):
    """A complete, valid all-black 1-bit PNG, written without allocating the image in memory."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def _bad(call, *args, **kwargs) -> str:
    with pytest.raises(BadImageError) as caught:
        call(*args, **kwargs)
    assert isinstance(caught.value, DataError)  # the CLI turns it into exit code 1
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message.lower()


# --- files that must be rejected -----------------------------------------------------------


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_truncated_jpeg(tmp_path, call):
    whole = _noisy_jpeg(tmp_path / "whole.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])
    message = _bad(call, cut)
    assert "truncated" in message and "jpeg" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_jpeg_cut_inside_its_header(tmp_path, call):
    whole = _noisy_jpeg(tmp_path / "whole.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[:300])
    assert "truncated" in _bad(call, cut)


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_truncated_png(tmp_path, call):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    message = _bad(call, tmp_path / "cut.png")
    assert "truncated" in message and "png" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_zero_byte_file(tmp_path, call):
    (tmp_path / "empty.jpg").write_bytes(b"")
    message = _bad(call, tmp_path / "empty.jpg")
    assert "empty" in message and "0 bytes" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_missing_path(tmp_path, call):
    assert "not found" in _bad(call, tmp_path / "nope.png")


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_directory(tmp_path, call):
    (tmp_path / "folder.png").mkdir()
    message = _bad(call, tmp_path / "folder.png")
    assert "not a regular file" in message and "directory" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_text_file_with_jpg_extension(tmp_path, call):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n" * 20, encoding="utf-8")
    message = _bad(call, tmp_path / "notes.jpg")
    assert "not a recognised image" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_over_pillow_pixel_limit(tmp_path, call):
    # 10000x9000 = 90 M pixels: just over Pillow's 89.5 M limit (Pillow only warns below 2x).
    assert 10000 * 9000 > Image.MAX_IMAGE_PIXELS
    bomb = _bilevel_png(tmp_path / "bomb.png", 10000, 9000)
    assert bomb.stat().st_size < 100_000
    message = _bad(call, bomb)
    assert "decompression bomb" in message and "10000x9000" in message


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_far_over_pillow_pixel_limit(tmp_path, call):
    # Over 2x the limit Pillow itself refuses to open the file; the reason must be the same.
    bomb = _bilevel_png(tmp_path / "bomb.png", 20000, 9000)
    assert "decompression bomb" in _bad(call, bomb)


@pytest.mark.parametrize("call", [probe_image, load_rgb])
def test_low_max_pixels(tmp_path, call):
    Image.new("RGB", (64, 64), RED).save(tmp_path / "small.png")
    message = _bad(call, tmp_path / "small.png", max_pixels=1000)
    assert "decompression bomb" in message and "64x64" in message and "1,000" in message
    # At the limit exactly it is fine.
    assert probe_image(tmp_path / "small.png", max_pixels=64 * 64).width == 64


def test_the_bomb_check_comes_before_any_decoding(tmp_path):
    # A header claiming 100k x 100k with almost no data: rejected from the header alone, fast.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    assert "decompression bomb" in _bad(load_rgb, path)


# --- odd but valid images ------------------------------------------------------------------


def test_rgb_jpeg_probe(tmp_path):
    path = _noisy_jpeg(tmp_path / "a.jpg", size=(80, 48))
    info = probe_image(path)
    assert info == ImageInfo(80, 48, path.stat().st_size, "JPEG", "RGB", 1)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (80, 48)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    _halves("CMYK", (64, 64), (0, 255, 255, 0), (0, 0, 0, 0)).save(path, "JPEG", quality=95)
    info = probe_image(path)
    assert (info.format, info.mode, info.width, info.height) == ("JPEG", "CMYK", 64, 64)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert _close(image.getpixel((8, 32)), RED)  # C0 M100 Y100 K0 is red
    assert _close(image.getpixel((56, 32)), WHITE)  # no ink is white


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    values = np.zeros((64, 64), dtype=np.uint16)
    values[:, 16:32] = 300  # clipping to 8 bits would make this 255
    values[:, 32:48] = 257 * 100
    values[:, 48:] = 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    info = probe_image(path)
    assert info.mode.startswith("I") and (info.width, info.height) == (64, 64)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((20, 0)) == (1, 1, 1)
    assert image.getpixel((40, 0)) == (100, 100, 100)
    assert image.getpixel((60, 0)) == (255, 255, 255)


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    palette.paste(1, (32, 0, 64, 64))
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)  # index 0 (red) is fully transparent
    assert probe_image(path).mode == "P"
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == WHITE  # not the hidden red
    assert image.getpixel((50, 5)) == BLUE


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = _halves("RGBA", (64, 64), (*RED, 0), (*BLUE, 255))
    rgba.paste((0, 0, 0, 128), (0, 48, 64, 64))  # half-transparent black band
    path = tmp_path / "rgba.png"
    rgba.save(path)
    assert probe_image(path).mode == "RGBA"
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == WHITE
    assert image.getpixel((50, 5)) == BLUE
    assert _close(image.getpixel((5, 60)), (127, 127, 127), tol=1)
    assert load_rgb(path).getpixel((5, 5)) == WHITE


def test_exif_rotated_jpeg(tmp_path):
    # Stored 64 wide x 32 high, left half red; orientation 6 means "rotate 90 degrees
    # clockwise to display": displayed 32 wide x 64 high, top half red.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    _halves("RGB", (64, 32), RED, BLUE).save(path, "JPEG", quality=95, exif=exif)
    info = probe_image(path)
    assert (info.width, info.height, info.orientation) == (32, 64, 6)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (32, 64)
    assert _close(image.getpixel((16, 8)), RED)
    assert _close(image.getpixel((16, 56)), BLUE)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_rotation_in_other_formats(tmp_path, fmt):
    # Pillow turns TIFF pixels itself on load (and, from Pillow 11, reports the turned
    # size at open): the displayed size must still be swapped exactly once.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated.{fmt.lower()}"
    _halves("RGB", (64, 32), RED, BLUE).save(path, fmt, exif=exif)
    info = probe_image(path)
    assert (info.width, info.height, info.orientation) == (32, 64, 6)
    image = load_rgb(path)
    assert image.size == (32, 64)
    assert _close(image.getpixel((16, 8)), RED)
    assert _close(image.getpixel((16, 56)), BLUE)


@pytest.mark.parametrize(("mode", "key"), [("RGB", RED), ("L", 76)])
def test_colour_key_transparency_is_composited_on_white(tmp_path, mode, key):
    # PNG tRNS on an RGB or greyscale image: pixels of that one colour are transparent.
    path = tmp_path / "keyed.png"
    _halves(mode, (64, 64), key, BLUE if mode == "RGB" else 29).save(path, transparency=key)
    image = load_rgb(path)
    assert image.getpixel((5, 5)) == WHITE
    assert image.getpixel((50, 5)) == (BLUE if mode == "RGB" else (29, 29, 29))


def test_truncated_webp(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "whole.webp", quality=80)
    whole = (tmp_path / "whole.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(whole[: len(whole) // 2])
    for call in (probe_image, load_rgb):
        message = _bad(call, tmp_path / "cut.webp")
        assert "truncated" in message or "unreadable" in message


def test_truncated_bmp_passes_the_cheap_probe_but_not_decoding(tmp_path):
    # No end marker to check in a BMP: the header probe accepts it, a full decode does not.
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "whole.bmp")
    whole = (tmp_path / "whole.bmp").read_bytes()
    (tmp_path / "cut.bmp").write_bytes(whole[: len(whole) // 2])
    assert probe_image(tmp_path / "cut.bmp").format == "BMP"
    assert "truncated" in _bad(load_rgb, tmp_path / "cut.bmp")


def test_draft_size_decodes_a_jpeg_smaller(tmp_path):
    path = _noisy_jpeg(tmp_path / "big.jpg", size=(512, 256))
    image = load_rgb(path, draft_size=(64, 64))
    assert image.mode == "RGB" and image.size[0] < 512 and image.size[0] / image.size[1] == 2


def test_jpeg_with_zero_padding_after_the_end_marker_is_accepted(tmp_path):
    path = _noisy_jpeg(tmp_path / "padded.jpg")
    path.write_bytes(path.read_bytes() + b"\x00" * 16)
    assert probe_image(path).format == "JPEG"
    assert load_rgb(path).size == (64, 64)


@pytest.mark.parametrize(
    ("name", "expected"), [("a.JPG", True), ("a.jpeg", True), ("a.webp", True), ("a.txt", False), ("jpg", False)]
)
def test_is_image_file(tmp_path, name, expected):
    assert is_image_file(tmp_path / name) is expected
