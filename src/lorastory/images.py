"""Reading images safely and cheaply.

:func:`probe_image` learns what filters need (displayed size, file size,
format) from the file header alone, and rejects files that would break later
stages: missing, empty, not an image, truncated, or a decompression bomb.
:func:`load_rgb` decodes fully, applies the EXIF orientation and converts any
mode (CMYK, 16-bit, palette with transparency...) to 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from lorastory.errors import BadImageError, DataError, first_line
from lorastory.fileio import open_regular_file

# EXIF orientations 5-8 rotate by 90 degrees: the displayed width is the stored height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112
_PNG_IEND = b"IEND\xaeB`\x82"

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}
)


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says, sizes as displayed (EXIF applied)."""

    width: int
    height: int
    file_size: int
    format: str
    mode: str
    orientation: int = 1


def _jpeg_ends_after_scan(handle: BinaryIO) -> bool:
    """True if an end-of-image marker follows the start of the scan data.

    Only called when the file does not end with the marker: data appended after
    a complete JPEG (a phone's motion-photo video, say) is not truncation, while
    a marker inside an EXIF thumbnail (before the scan) does not count.
    """
    handle.seek(0)
    data = handle.read()
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return data.find(b"\xff\xd9", position) >= 0
    return False


def _check_complete(handle: BinaryIO, fmt: str, file_size: int) -> None:
    """Reject a file whose end marker is missing: a cheap truncation test (reads the tail only)."""
    if fmt not in ("JPEG", "PNG", "GIF", "WEBP"):
        return
    tail_len = min(file_size, 4096)
    handle.seek(file_size - tail_len)
    tail = handle.read(tail_len)
    if fmt == "WEBP":
        handle.seek(4)
        declared = int.from_bytes(handle.read(4), "little") + 8
    if fmt == "JPEG":
        # Encoders may pad after the end-of-image marker, and phones append data.
        end = tail.rstrip(b"\x00")
        if not end.endswith(b"\xff\xd9") and not _jpeg_ends_after_scan(handle):
            raise BadImageError("truncated JPEG (no end-of-image marker)")
    elif fmt == "PNG":
        if not tail.endswith(_PNG_IEND):
            raise BadImageError("truncated PNG (no IEND chunk)")
    elif fmt == "GIF":
        if not tail.rstrip(b"\x00").endswith(b"\x3b"):
            raise BadImageError("truncated GIF (no trailer)")
    elif declared > file_size:
        raise BadImageError(f"truncated WebP ({file_size} of {declared} bytes)")


# Larger files are refused before any byte is decoded: no real training picture comes near it.
MAX_FILE_BYTES = 1 << 30


def _open_local(file: str) -> tuple[BinaryIO, int]:
    try:
        return open_regular_file(file)
    except DataError as err:
        raise BadImageError(str(err)) from None


@contextlib.contextmanager
def _open_checked(path: str | os.PathLike[str], max_pixels: int | None) -> Iterator[tuple[Image.Image, int, BinaryIO]]:
    """Open a file once and its image lazily (header only), after checking it is a non-empty regular file."""
    file = os.fspath(path)
    handle, size = _open_uri(file) if "://" in file else _open_local(file)
    with handle:
        if size == 0:
            raise BadImageError("empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise BadImageError(f"file of {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for an image")
        limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle)
        except Image.DecompressionBombError:
            raise BadImageError("decompression bomb: pixel count over the safety limit") from None
        except UnidentifiedImageError:
            raise BadImageError("not a recognised image format") from None
        except Exception as err:  # noqa: BLE001  any decoder failure (text-chunk bomb, AVIF/HEIF...) is a bad image
            raise BadImageError(f"unreadable image ({first_line(err, 200)})") from None
        with image:
            if limit and image.width * image.height > limit:
                raise BadImageError(
                    f"decompression bomb: {image.width}x{image.height} is over the {limit:,}-pixel safety limit"
                )
            yield image, size, handle


def _open_uri(uri: str) -> tuple[BinaryIO, int]:
    """Open ``s3://``, ``gs://``, ``file://``... through fsspec (plus s3fs, gcsfs... for the scheme)."""
    try:
        import fsspec
    except ImportError:
        raise BadImageError("reading a URI needs fsspec (pip install fsspec)") from None
    try:
        fs, target = fsspec.core.url_to_fs(uri)
        info = fs.info(target)
        if info.get("type") != "file":
            raise BadImageError("not a regular file (a directory?)")
        return fs.open(target, "rb"), int(info.get("size") or 0)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except ImportError as err:  # e.g. s3:// without s3fs installed
        raise BadImageError(f"no filesystem for this URI ({err})") from None
    except (OSError, ValueError) as err:
        raise BadImageError(f"cannot read file ({err})") from None


def _orientation(image: Image.Image) -> int:
    if "exif" not in image.info and image.format not in ("TIFF", "MPO"):
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block only loses the orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def probe_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> ImageInfo:
    """Read an image's header; raise :class:`BadImageError` with the reason if unusable."""
    with _open_checked(path, max_pixels) as (image, file_size, handle):
        fmt = image.format or "UNKNOWN"
        orientation = _orientation(image)
        try:
            width, height = _displayed_size(image, orientation)
        except Exception as err:  # noqa: BLE001  a malformed TIFF tag table
            raise BadImageError(f"unreadable image header ({first_line(err, 200)})") from None
        mode = image.mode
        _check_complete(handle, fmt, file_size)
    return ImageInfo(width, height, file_size, fmt, mode, orientation)


def _displayed_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    """Width and height as displayed, from an opened (not decoded) image."""
    width, height = image.size
    if orientation not in _TRANSPOSED_ORIENTATIONS:
        return width, height
    # Pillow >= 11 reports a TIFF's size already turned (it also turns the pixels on
    # load); only a size that still equals the stored one needs swapping.
    if image.format == "TIFF" and (width, height) != (image.tag_v2.get(256), image.tag_v2.get(257)):
        return width, height
    return height, width


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on ``background``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the value range to 8 bits instead of clipping.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).round().astype("uint8"), "L")
    if image.mode == "F":
        image = _float_to_l(image)
    if image.mode == "LAB":
        image = _lab_to_rgb(image)
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A palette entry or (for L/RGB) a colour key marks transparent pixels.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _float_to_l(image: Image.Image) -> Image.Image:
    """32-bit float greyscale to 8 bits: values in 0..1 are scaled by 255, wider ranges by their peak."""
    import numpy as np

    array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, peak = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low >= 0.0 and peak <= 1.0:
        scaled = array * 255.0
    elif low >= 0.0:
        scaled = array * (255.0 / peak)
    else:
        scaled = (array - low) * (255.0 / max(peak - low, 1e-12))
    return Image.fromarray(np.clip(scaled, 0, 255).round().astype("uint8"), "L")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, transform)


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Iterator[Image.Image]:
    """The image at ``path`` opened lazily (header read) after every check :func:`probe_image` makes;
    the caller decodes what it needs inside the block."""
    with _open_checked(path, max_pixels) as (image, file_size, handle):
        _check_complete(handle, image.format or "UNKNOWN", file_size)
        yield image


def load_rgb(
    path: str | os.PathLike[str],
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Decode an image fully (EXIF orientation applied) as 8-bit RGB; transparency over ``background``.

    ``draft_size`` lets JPEG decode at a reduced scale when only a small
    version is needed (thumbnails, perceptual hashes), which is many times faster.
    """
    with open_image(path, max_pixels) as image:
        if draft_size is not None:
            image.draft("RGB", draft_size)
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright if upright is not None else image, background)
        except MemoryError:
            raise BadImageError("not enough memory to decode this image") from None
        except Exception as err:  # noqa: BLE001  any decoder failure is this image's problem, not the run's
            raise BadImageError(f"cannot decode image ({first_line(err, 200)})") from None


def is_image_file(path: Path) -> bool:
    """True for a file whose extension is one of the image types we import."""
    return path.suffix.lower() in IMAGE_EXTENSIONS
