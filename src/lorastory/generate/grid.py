"""Storyboards: panels pasted into a grid, with an optional title and captions.

The defaults reproduce the reference workflow's last step: eight 1024x1024
panels, two per row, four rows, pasted edge to edge; ``resize_to=(1024, 2048)``
then gives its final image pixel for pixel (it resizes with Pillow's default
bicubic filter). Panels of other sizes are scaled to fit their cell, keeping
their aspect ratio, and centred on the background.

Captions (one strip under each panel, all strips the same height) and the title
(a strip across the top) are drawn with a CJK-capable font
(:mod:`lorastory.generate.fonts`) and wrapped by measured width, so Chinese,
which has no spaces to break at, wraps too.
"""

from __future__ import annotations

import math
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from lorastory.images import ImageInfo, load_rgb, probe_image, to_rgb
from lorastory.errors import BadImageError, ConfigError, OutputError
from lorastory.fileio import atomic_open, check_outputs_apart, display_path, is_valid_text
from lorastory.generate import fonts

ImageSource = Image.Image | str | os.PathLike[str]
Color = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

DEFAULT_COLS = 2
TEXT_COLOR: Color = (0, 0, 0)
ELLIPSIS = "…"
# 268 M pixels (~800 MB as RGB, twice that while resizing): far beyond any real storyboard (the
# reference's is 2 M), and what a machine with a few GB to spare can hold. Every size is checked
# against it before anything of that size is allocated: the grid, the cells and --resize.
MAX_BOARD_PIXELS = 1 << 28
_SIZE_TEXT = re.compile(r"^\s*(\d{1,9})\s*[xX×]\s*(\d{1,9})\s*$")

# Kinsoku: characters that may not start a line, and ones that may not end one.
_NO_LINE_START = frozenset("，。、；：？！）》」』】〕〉”’…—·～,.;:?!)]}%")
_NO_LINE_END = frozenset("（《「『【〔〈“‘([{")


# --------------------------------------------------------------------------- layout


def grid_shape(count: int, cols: int, rows: int | None = None) -> tuple[int, int]:
    """(cols, rows) for ``count`` panels.

    Without ``rows``: as many rows as needed, and no more columns than panels.
    """
    if count < 1:
        raise ConfigError("no images for the storyboard: pass at least one image")
    if cols < 1:
        raise ConfigError(f"cols must be at least 1, got {cols}")
    if rows is None:
        return min(cols, count), math.ceil(count / cols)
    if rows < 1 or rows * cols < count:
        raise ConfigError(
            f"{cols} columns x {rows} rows cannot hold {count} images; raise rows or cols, or leave rows out"
        )
    return cols, rows


def fit_into(image: Image.Image, size: tuple[int, int], background: Color = (255, 255, 255)) -> Image.Image:
    """``image`` scaled to fit ``size`` (aspect ratio kept) and centred on ``background``."""
    if image.size == size:
        return image
    scale = min(size[0] / image.width, size[1] / image.height)
    fitted = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    cell = Image.new("RGB", size, background)
    cell.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return cell


def _load(source: ImageSource, background: Color) -> Image.Image:
    """A panel as RGB, transparency composited on ``background``, EXIF orientation applied.

    A path goes through :func:`~lorastory.images.load_rgb` (a regular file opened without blocking;
    a known, complete image within the pixel limit); any problem is a :class:`BadImageError` naming the file.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source, background)
    try:
        return load_rgb(source, background=background)
    except BadImageError as err:
        raise BadImageError(f"{display_path(source)}: {err}") from None


def _probe(source: ImageSource) -> tuple[int, int]:
    """The displayed size of a panel, from its header alone (paths) or the image."""
    if isinstance(source, Image.Image):
        return source.size
    try:
        info: ImageInfo = probe_image(source)
    except BadImageError as err:
        raise BadImageError(f"{display_path(source)}: {err}") from None
    return info.width, info.height


def _check_size(name: str, size: tuple[int, int] | None) -> None:
    if size is None:
        return
    if (len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size) or min(size) < 1):
        raise ConfigError(f"{name} must be two positive integers (width, height), got {size!r}")
    if size[0] * size[1] > MAX_BOARD_PIXELS:
        raise ConfigError(f"{name} {size[0]}x{size[1]} is too large (over the limit of {MAX_BOARD_PIXELS:,} pixels "
                          "for a storyboard); use a smaller size")


def _check_board(width: int, height: int) -> None:
    if width * height > MAX_BOARD_PIXELS:
        raise ConfigError(f"a {width}x{height} storyboard is too large (over the limit of {MAX_BOARD_PIXELS:,} pixels); "
                          "use a smaller cell_size, spacing or fewer images")


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """``"1024x2048"`` -> (1024, 2048): two positive whole numbers within :data:`MAX_BOARD_PIXELS`."""
    match = _SIZE_TEXT.match(text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise ConfigError(f"{what} {text!r}: write WIDTHxHEIGHT with two positive whole numbers, e.g. 1024x2048")
    size = (int(match[1]), int(match[2]))
    _check_size(what, size)
    return size


def check_grid_text(title: str | None, captions: Sequence[str | None] | None) -> None:
    """Refuse a title or caption that is not valid Unicode (it could not be drawn or stored)."""
    for what, text in [("--title", title), *(("--caption", c) for c in captions or ())]:
        if text is not None and not is_valid_text(text):
            raise ConfigError(f"{what} {display_path(text)!r}: not valid Unicode text (a lone surrogate); fix it")


def check_grid_output(out: str | os.PathLike[str], images: Sequence[ImageSource], overwrite: bool) -> None:
    """``out`` may not be one of the images (by any name or link); an existing file is replaced only with ``overwrite``."""
    target = Path(out)
    check_outputs_apart([("--out", target)],
                        [(f"image {i}", p) for i, p in enumerate(images, start=1) if not isinstance(p, Image.Image)])
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise OutputError(f"--out {display_path(target)}: {err.strerror}; choose another output") from None
    if not stat.S_ISREG(mode):
        raise OutputError(f"--out {display_path(target)} exists and is not a regular file; choose another output")
    if not overwrite:
        raise OutputError(f"--out {display_path(target)} already exists; choose a new --out or pass --overwrite")


# --------------------------------------------------------------------------- text


def _is_wide(char: str) -> bool:
    """True for characters set one per cell (CJK ideographs, kana, full-width punctuation)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def _tokens(paragraph: str) -> list[str]:
    """Break points: runs of other characters (words), each space, each wide character."""
    tokens: list[str] = []
    word = ""
    for char in paragraph:
        if char.isspace() or _is_wide(char):
            if word:
                tokens.append(word)
                word = ""
            tokens.append(char)
        else:
            word += char
    if word:
        tokens.append(word)
    return tokens


def _width(font: Font, text: str) -> float:
    return font.getlength(text)


def _wrap_paragraph(paragraph: str, font: Font, max_width: float) -> list[str]:
    lines: list[str] = []
    line = ""
    for token in _tokens(paragraph):
        if token.isspace() and not line:
            continue
        if _width(font, line + token) <= max_width:
            line += token
            continue
        carry = ""
        if line.strip():
            # Keep closing punctuation off a line start and opening punctuation off a
            # line end by moving the last (wide) character down with it.
            stripped = line.rstrip()
            moves = token[0] in _NO_LINE_START or stripped[-1] in _NO_LINE_END
            if moves and len(stripped) > 1 and _is_wide(stripped[-1]) and line == stripped:
                carry, line = line[-1], line[:-1]
            lines.append(line.rstrip())
        if token.isspace():
            line = carry
            continue
        line = carry
        if _width(font, line + token) <= max_width:
            line += token
            continue
        for char in token:  # a word longer than a line: break it between characters
            if line and _width(font, line + char) > max_width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line.rstrip())
    return lines


def wrap_text(text: str, font: Font, max_width: float) -> list[str]:
    """``text`` broken into lines no wider than ``max_width`` pixels (unless one character is wider).

    Breaks at spaces between words and between any two CJK characters;
    newlines in ``text`` are kept.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(_wrap_paragraph(paragraph, font, max_width))
    return lines


def _truncate(lines: list[str], max_lines: int, font: Font, max_width: float) -> list[str]:
    """The first ``max_lines`` lines, the last ending in an ellipsis if any were cut."""
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and _width(font, last + ELLIPSIS) > max_width:
        last = last[:-1]
    kept[-1] = last.rstrip() + ELLIPSIS
    return kept


def line_height(font: Font) -> int:
    """Distance between baselines of consecutive lines."""
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent
    left, top, right, bottom = font.getbbox("Ag国")
    return bottom - top + 2


def _padding(font: Font) -> int:
    """Space above and below text, and either side of it: a third of the font size."""
    size = font.size if isinstance(font, ImageFont.FreeTypeFont) else line_height(font)
    return max(2, int(size) // 3)


def _draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[str], font: Font, box: tuple[int, int, int, int], color: Color
) -> None:
    """Draw ``lines`` centred horizontally, from the top of ``box`` (left, top, width, height) plus padding."""
    left, top, width, _height = box
    step = line_height(font)
    y = top + _padding(font)
    for line in lines:
        x = left + (width - _width(font, line)) / 2
        draw.text((x, y), line, font=font, fill=color)
        y += step


def _text_block(texts: Sequence[str | None], font: Font, width: int, height: int | None) -> tuple[list[list[str]], int]:
    """Wrapped lines of each text and the common strip height (fit to the longest, or given)."""
    pad = _padding(font)
    usable = max(1, width - 2 * pad)
    wrapped = [wrap_text(text.strip(), font, usable) if text and text.strip() else [] for text in texts]
    step = line_height(font)
    if height is None:
        most = max((len(lines) for lines in wrapped), default=0)
        return wrapped, (2 * pad + most * step if most else 0)
    if height < 0:
        raise ConfigError(f"caption_height must be 0 or more pixels, got {height}")
    fits = max(0, (height - 2 * pad) // step)
    return [_truncate(lines, fits, font, usable) if fits else [] for lines in wrapped], height


def default_font_size(cell_width: int) -> int:
    """Caption size for a cell: 1/24 of its width (43 px for 1024), at least 12 px."""
    return max(12, round(cell_width / 24))


# --------------------------------------------------------------------------- storyboard


def make_storyboard(
    images: Sequence[ImageSource],
    *,
    cols: int = DEFAULT_COLS,
    rows: int | None = None,
    cell_size: tuple[int, int] | None = None,
    spacing: int = 0,
    background: Color = (255, 255, 255),
    title: str | None = None,
    captions: Sequence[str | None] | None = None,
    caption_height: int | None = None,
    font_size: int | None = None,
    text_color: Color = TEXT_COLOR,
    resize_to: tuple[int, int] | None = None,
) -> Image.Image:
    """Paste ``images`` (PIL images or paths) row by row into a ``cols`` x ``rows`` grid.

    ``cell_size`` defaults to the largest panel width and height; ``spacing``
    pixels of ``background`` separate the cells and frame the grid. ``captions``
    (one per image, ``None`` or ``""`` for none) go in a strip under each panel,
    ``caption_height`` pixels tall (default: enough for the longest caption);
    ``title`` goes in a strip across the top. ``font_size`` defaults to
    :func:`default_font_size` of the cell width (the title is 1.4 times larger).
    ``resize_to`` resizes the finished board to exactly (width, height).
    """
    # 1. Check the arguments before decoding anything.
    ncols, nrows = grid_shape(len(images), cols, rows)
    if captions is not None and len(captions) != len(images):
        raise ConfigError(
            f"got {len(captions)} captions for {len(images)} images; give one per image (None or '' for none)"
        )
    if spacing < 0:
        raise ConfigError(f"spacing must be 0 or more pixels, got {spacing}")
    _check_size("cell_size", cell_size)
    _check_size("resize_to", resize_to)
    if font_size is not None and font_size < 1:
        raise ConfigError(f"font_size must be at least 1 pixel, got {font_size}")

    # 2. Size the cells from the headers (the grid must fit before anything is decoded), then decode.
    sizes = [_probe(source) for source in images]
    cell_w, cell_h = cell_size or (max(w for w, _ in sizes), max(h for _, h in sizes))
    _check_board(ncols * cell_w + (ncols + 1) * spacing, nrows * cell_h + (nrows + 1) * spacing)
    panels = [_load(source, background) for source in images]
    size = font_size or default_font_size(cell_w)

    # 3. Wrap the text and size the strips.
    caption_font = None
    caption_lines: list[list[str]] = [[] for _ in panels]
    strip_h = 0
    texts = [None if c is None else str(c) for c in captions or ()]
    if any(t and t.strip() for t in texts) or (texts and caption_height):
        caption_font = fonts.cjk_font(size)
        caption_lines, strip_h = _text_block(texts, caption_font, cell_w, caption_height)
    board_w = ncols * cell_w + (ncols + 1) * spacing
    title_font = None
    title_lines: list[str] = []
    title_h = 0
    if title and title.strip():
        title_font = fonts.cjk_font(round(size * 1.4))
        [title_lines], title_h = _text_block([title], title_font, board_w, None)
    board_h = title_h + nrows * (cell_h + strip_h) + (nrows + 1) * spacing
    _check_board(board_w, board_h)

    # 4. Paste panels and draw text.
    board = Image.new("RGB", (board_w, board_h), background)
    draw = ImageDraw.Draw(board)
    if title_font is not None and title_lines:
        _draw_lines(draw, title_lines, title_font, (0, 0, board_w, title_h), text_color)
    for index, panel in enumerate(panels):
        row, col = divmod(index, ncols)
        left = spacing + col * (cell_w + spacing)
        top = title_h + spacing + row * (cell_h + strip_h + spacing)
        board.paste(fit_into(panel, (cell_w, cell_h), background), (left, top))
        if caption_font is not None and caption_lines[index]:
            _draw_lines(draw, caption_lines[index], caption_font, (left, top + cell_h, cell_w, strip_h), text_color)

    # 5. Resize as asked (Pillow's default filter, as the reference workflow does).
    if resize_to is not None and (resize_to[0], resize_to[1]) != board.size:
        board = board.resize((resize_to[0], resize_to[1]), Image.Resampling.BICUBIC)
    return board


def save_storyboard(images: Sequence[ImageSource], path: str | os.PathLike[str], compress_level: int | None = None,
                    **options: Any) -> Image.Image:
    """Make a storyboard (``options`` are :func:`make_storyboard`'s) and write it atomically; return it.

    The format follows the extension (.png, .jpg, .webp...); a PNG gets the
    title in its standard ``Title`` text chunk, and is compressed at ``compress_level``
    (zlib's 0-9; default Pillow's, 6: smaller and slower than 1).
    """
    target = Path(path)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(f"{display_path(target)}: unknown image extension {display_path(target.suffix)!r}; "
                          "use .png, .jpg or .webp")
    board = make_storyboard(images, **options)
    save_args: dict[str, Any] = {}
    if fmt == "PNG":
        if options.get("title"):
            info = PngImagePlugin.PngInfo()
            info.add_text("Title", str(options["title"]))
            save_args["pnginfo"] = info
        if compress_level is not None:
            save_args["compress_level"] = compress_level
    elif fmt == "JPEG":
        save_args["quality"] = 95
    try:
        with atomic_open(target, "wb") as handle:
            board.save(handle, format=fmt, **save_args)
    except OSError as err:
        raise OutputError(f"{display_path(target)}: cannot write the storyboard ({err.strerror or err}); "
                          "choose another output") from None
    return board
