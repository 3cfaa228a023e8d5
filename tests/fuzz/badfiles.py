"""Bytes of good and bad image files for the fuzz corpus: deterministic, made in memory.

Every maker returns the file's bytes (or, for special files, a callable that creates
the thing at a path), so a case can place the same input anywhere.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image


def good_png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A noisy RGB PNG (never a constant colour, so a black export is detectable)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(30, 226, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), "PNG")


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(size: tuple[int, int] = (48, 40)) -> np.ndarray:
    x = np.linspace(0.0, 1.0, size[0], dtype=np.float32)
    y = np.linspace(0.0, 1.0, size[1], dtype=np.float32)[:, None]
    return (x[None, :] * 0.7 + y * 0.3).astype(np.float32)


def truncated_png(seed: int = 7) -> bytes:
    data = good_png(seed)
    return data[: len(data) // 2]


def garbage(seed: int = 11, length: int = 600) -> bytes:
    return random.Random(seed).randbytes(length)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _with_chunk_after_ihdr(png: bytes, chunk: bytes) -> bytes:
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def ztxt_bomb_png(seed: int = 3) -> bytes:
    """A PNG whose zTXt chunk inflates past Pillow's MAX_TEXT_CHUNK (1 MiB) from 2 KB."""
    body = b"Comment\x00\x00" + zlib.compress(b"A" * (4 << 20), 9)
    return _with_chunk_after_ihdr(good_png(seed), _chunk(b"zTXt", body))


def iccp_bomb_png(seed: int = 4) -> bytes:
    """A PNG whose iCCP profile inflates past Pillow's limit."""
    body = b"icc\x00\x00" + zlib.compress(b"\x00" * (4 << 20), 9)
    return _with_chunk_after_ihdr(good_png(seed), _chunk(b"iCCP", body))


def itxt_parameters_png(seed: int = 5) -> bytes:
    """A PNG with an A1111 'parameters' text that is garbage (for grid --captions)."""
    body = b"parameters\x00\x00\x00\x00\x00" + bytes(range(1, 256)) * 40
    return _with_chunk_after_ihdr(good_png(seed), _chunk(b"iTXt", body))


def avif_bytes(seed: int = 6) -> bytes:
    """A valid AVIF picture (what a phone exports), often renamed .png by users."""
    rng = np.random.default_rng(seed)
    return _save(Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)), "AVIF")


def corrupt_avif(seed: int = 8) -> bytes:
    """An ISO-BMFF 'ftyp avif' header followed by garbage: the AVIF decoder raises RuntimeError."""
    head = struct.pack(">I", 28) + b"ftypavif" + b"\x00\x00\x00\x00" + b"avifmif1miaf"
    return head + garbage(seed, 400)


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A 100-byte PNG declaring a 1.6-gigapixel picture."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _chunk(b"IEND", b"")


def bomb_gif() -> bytes:
    """A GIF header declaring 65535x65535."""
    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b",\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;"


def cmyk_jpeg() -> bytes:
    g = (_gradient() * 200).astype(np.uint8)
    return _save(Image.merge("CMYK", [Image.fromarray(g), Image.fromarray(255 - g), Image.fromarray(g // 2),
                                      Image.fromarray(g // 3)]), "JPEG", quality=90)


def cmyk_tiff() -> bytes:
    g = (_gradient() * 200).astype(np.uint8)
    return _save(Image.merge("CMYK", [Image.fromarray(g)] * 3 + [Image.fromarray(g // 4)]), "TIFF")


def png16() -> bytes:
    return _save(Image.fromarray((_gradient() * 60000).astype(np.uint16)), "PNG")


def float32_tiff() -> bytes:
    """Mode F values in 0..1: a converter that clips instead of scaling gives all black."""
    return _save(Image.fromarray(_gradient(), mode="F"), "TIFF")


def int32_tiff() -> bytes:
    return _save(Image.fromarray((_gradient() * 1_000_000).astype(np.int32), mode="I"), "TIFF")


def palette_alpha_png() -> bytes:
    image = Image.fromarray((_gradient() * 255).astype(np.uint8)).convert("P")
    return _save(image, "PNG", transparency=0)


def la_png() -> bytes:
    g = (_gradient() * 255).astype(np.uint8)
    return _save(Image.merge("LA", [Image.fromarray(g), Image.fromarray(255 - g)]), "PNG")


def one_bit_png() -> bytes:
    return _save(Image.fromarray((_gradient() * 255).astype(np.uint8)).convert("1"), "PNG")


def exif_rotated_jpeg() -> bytes:
    rng = np.random.default_rng(12)
    image = Image.fromarray(rng.integers(30, 220, (40, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(image, "JPEG", exif=exif.tobytes(), quality=90)


def animated_gif() -> bytes:
    rng = np.random.default_rng(13)
    frames = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()
