"""PNG files encoded in parallel strips: the pixels and text chunks Pillow would write, on every core.

Pillow encodes a PNG on one core (a 1024x1024 panel about 0.2 s; an 8-panel storyboard, 2048x4528,
about 1.7 s: what a user waited for last). A PNG's pixels are one zlib stream of filtered rows, and a
deflate stream may be made of pieces compressed apart, each but the last ended with a sync flush (as
``pigz`` does). So the rows are cut into strips; each strip is filtered (its first row against the row
above it in the picture) and compressed on a worker thread (numpy and zlib release the GIL), and the
pieces are joined under one zlib header and Adler-32. Each row gets the filter (None, Sub, Up, Average,
Paeth) whose bytes are nearest zero, the heuristic of libpng and Pillow, so files come out about as
large as Pillow's at the same zlib level. Any PNG reader decodes the same pixels.

Only what a run writes takes this path (8-bit L, LA, RGB or RGBA, no ICC profile, transparency or
other ``info``, text chunks alone); anything else is left to Pillow (:func:`can_encode`).
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import Executor

import numpy as np
from PIL import Image, PngImagePlugin

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
# Rows of a strip at least: the deflate window starts empty in each strip, so strips stay large
# (64 rows of a 2048-pixel RGB board are 393 KB; the boundary costs a few bytes).
MIN_STRIP_ROWS = 64
_BLOCK_ROWS = 16


def can_encode(image: Image.Image, info: PngImagePlugin.PngInfo | None = None) -> bool:
    """True when :func:`encode_png` writes what Pillow would: a plain 8-bit picture and text chunks only."""
    chunks = info.chunks if info is not None else []
    return (image.mode in _COLOR_TYPES and image.width > 0 and image.height > 0 and not image.info
            and all(chunk[0] in _TEXT_CHUNKS for chunk in chunks))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _zlib_header(level: int) -> bytes:
    """The two bytes zlib itself writes before a stream at ``level`` (its FLEVEL hint; the window is 32 KB)."""
    level = 6 if level < 0 else level
    hint = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    header = 0x78 << 8 | hint << 6
    return struct.pack(">H", header + 31 - header % 31)


def filter_rows(rows: np.ndarray, above: np.ndarray | None, bpp: int) -> np.ndarray:
    """``rows`` (h, n bytes) filtered for PNG: each row with the filter whose bytes are nearest zero,
    its type in front (h, n + 1). ``above`` is the picture's row before them (None for the first row).

    Byte arithmetic wraps modulo 256 as the PNG filters do; only Paeth's distances need 16 bits.
    """
    height, width = rows.shape
    up = np.empty_like(rows)
    up[0] = 0 if above is None else above
    up[1:] = rows[:-1]
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    upper_left = np.zeros_like(rows)
    upper_left[:, bpp:] = up[:, :-bpp]
    # Paeth: the neighbour nearest guess = left + up - upper_left (ties: left, then up), chosen by 0/1
    # masks (multiplying by a mask is several times faster than np.where here).
    up_step = up.astype(np.int16) - upper_left  # guess - left
    left_step = left.astype(np.int16) - upper_left  # guess - up
    to_left, to_up, to_upper_left = np.abs(up_step), np.abs(left_step), np.abs(up_step + left_step)
    take_left = (to_left <= np.minimum(to_up, to_upper_left)).view(np.uint8)
    take_up = (to_up <= to_upper_left).view(np.uint8)
    paeth = upper_left + take_up * (up - upper_left)
    paeth += take_left * (left - paeth)
    average = (left >> 1) + (up >> 1) + (left & up & 1)
    candidates = np.empty((5, height, width), np.uint8)
    candidates[0] = rows
    for kind, predictor in enumerate((left, up, average, paeth), start=1):
        np.subtract(rows, predictor, out=candidates[kind])
    # Distance from zero of each byte read as signed (libpng's "minimum sum of absolute differences");
    # abs(-128) stays -128 as int8, which is 128 read back unsigned.
    cost = np.abs(candidates.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.uint32)
    best = cost.argmin(axis=0)
    out = np.empty((height, width + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(height)]
    return out


def _strip(pixels: np.ndarray, start: int, stop: int, bpp: int, level: int, last: bool) -> tuple[bytes, int, int]:
    """One strip's deflate piece, and the Adler-32 and length of its filtered bytes."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    parts, checksum, length = [], 1, 0
    for block in range(start, stop, _BLOCK_ROWS):  # blocks that stay in the CPU's cache while filtered
        data = filter_rows(pixels[block : min(stop, block + _BLOCK_ROWS)], pixels[block - 1] if block else None, bpp)
        parts.append(deflate.compress(data))
        checksum, length = zlib.adler32(data, checksum), length + data.size
    parts.append(deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return b"".join(parts), checksum, length


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's and the second's length (zlib's adler32_combine)."""
    base = 65521
    rem = second_length % base
    low = (first & 0xFFFF) + (second & 0xFFFF) + base - 1
    high = (rem * (first & 0xFFFF)) % base + (first >> 16) + (second >> 16) + base - rem
    return (high % base) << 16 | low % base


def strip_bounds(height: int, strips: int) -> list[tuple[int, int]]:
    """``height`` rows cut into at most ``strips`` runs of rows, each at least :data:`MIN_STRIP_ROWS` (but one)."""
    count = max(1, min(strips, height // MIN_STRIP_ROWS))
    edges = [height * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def encode_png(image: Image.Image, info: PngImagePlugin.PngInfo | None, compress_level: int,
               pool: Executor | None = None, strips: int = 1) -> bytes:
    """``image`` as PNG bytes with ``info``'s text chunks (in order, before the pixels, as Pillow puts them).

    The rows are compressed in up to ``strips`` pieces on ``pool`` (here, one after another, without one);
    ``image`` must pass :func:`can_encode`. ``compress_level`` is zlib's (0-9, -1 its default 6).
    Never call it with ``pool`` from a task of that pool: the task would wait for tasks queued behind it.
    """
    if not can_encode(image, info):
        raise ValueError(f"encode_png writes 8-bit L/LA/RGB/RGBA pictures with text chunks, not {image.mode}")
    pixels = np.asarray(image).reshape(image.height, -1)
    bpp = len(image.getbands())
    bounds = strip_bounds(image.height, strips)
    jobs = [(pixels, start, stop, bpp, compress_level, stop == image.height) for start, stop in bounds]
    if pool is None or len(jobs) == 1:
        pieces = [_strip(*job) for job in jobs]
    else:
        pieces = [future.result() for future in [pool.submit(_strip, *job) for job in jobs]]
    checksum = 1
    for _piece, adler, length in pieces:
        checksum = adler32_combine(checksum, adler, length)
    # One IDAT chunk a strip: the zlib header goes in front of the first, the checksum after the last.
    stream = [piece for piece, _adler, _length in pieces]
    stream[0] = _zlib_header(compress_level) + stream[0]
    stream[-1] += struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, _COLOR_TYPES[image.mode], 0, 0, 0)
    chunks = [_chunk(b"IHDR", header), *(_chunk(chunk[0], chunk[1]) for chunk in (info.chunks if info else []))]
    chunks += [_chunk(b"IDAT", piece) for piece in stream]
    return _SIGNATURE + b"".join(chunks) + _chunk(b"IEND", b"")
