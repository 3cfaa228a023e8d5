"""Plots of checkpoint and scale scores, drawn with Pillow (matplotlib is not a dependency).

:func:`curves_png`: one small panel per score (each with its own y range, since their units
differ) against a shared x axis (training step or LoRA scale), the chosen x marked in every
panel. :func:`tradeoff_png`: content against style, one labelled point per candidate, joined in
order, the chosen one ringed. Both are written atomically as PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lorastory.fileio import atomic_write_bytes

WHITE, INK, GRID, LINE, MARK = (255, 255, 255), (30, 30, 30), (225, 225, 225), (31, 119, 180), (214, 39, 40)
CURVES_SIZE = (900, 720)
TRADEOFF_SIZE = (720, 560)
_MARGIN_LEFT, _MARGIN_RIGHT = 70, 20


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.01)
    return low - pad, high + pad


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


class _Box:
    """A plotting area: data coordinates to pixels."""

    def __init__(self, left: int, top: int, right: int, bottom: int, xr: tuple[float, float], yr: tuple[float, float]):
        self.left, self.top, self.right, self.bottom, self.xr, self.yr = left, top, right, bottom, xr, yr

    def at(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.xr[0]) / ((self.xr[1] - self.xr[0]) or 1)
        fy = (y - self.yr[0]) / ((self.yr[1] - self.yr[0]) or 1)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def frame(self, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
        for frac in (0.0, 0.5, 1.0):
            value = self.yr[0] + frac * (self.yr[1] - self.yr[0])
            _, y = self.at(self.xr[0], value)
            draw.line([(self.left, y), (self.right, y)], fill=GRID)
            draw.text((self.left - 6, y), _fmt(value), fill=INK, font=font, anchor="rm")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=INK)


def _title(draw: ImageDraw.ImageDraw, width: int, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    """Draw ``text`` centred at the top, wrapped at spaces to fit; return the y below it."""
    lines: list[str] = []
    for word in text.replace("\u2212", "-").split(" "):  # Pillow's default font has no U+2212
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width - 20:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    y = 8
    for line in lines[:3]:
        draw.text((width // 2, y), line, fill=INK, font=font, anchor="mt")
        y += 20
    return y


def _save(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def curves_png(path: str | Path, xs: Sequence[float], series: dict[str, Sequence[float | None]], x_label: str,
               title: str, mark: float | None = None, size: tuple[int, int] = CURVES_SIZE) -> Path:
    """One panel per series (missing values skipped) against ``xs``; ``mark`` draws the chosen x."""
    shown = {name: values for name, values in series.items() if any(v is not None for v in values)}
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    small, big = _font(12), _font(16)
    top, bottom = _title(draw, width, title, big) + 8, height - 40
    slot = (bottom - top) / max(len(shown), 1)
    xr = _range(list(xs)) if xs else (0.0, 1.0)
    for row, (name, values) in enumerate(shown.items()):
        present = [v for v in values if v is not None]
        box = _Box(_MARGIN_LEFT, round(top + row * slot + 16), width - _MARGIN_RIGHT, round(top + (row + 1) * slot - 6),
                   xr, _range(present))
        box.frame(draw, small)
        draw.text((box.left + 4, box.top - 2), name, fill=INK, font=small, anchor="ld")
        points = [box.at(x, v) for x, v in zip(xs, values) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=LINE, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=LINE)
        if mark is not None:
            mx, _ = box.at(mark, box.yr[0])
            for y in range(box.top, box.bottom, 8):
                draw.line([(mx, y), (mx, min(y + 4, box.bottom))], fill=MARK, width=2)
    axis = _Box(_MARGIN_LEFT, top, width - _MARGIN_RIGHT, bottom, xr, (0, 1))
    for x in xs:
        px, _ = axis.at(x, 0)
        draw.text((px, bottom + 4), _fmt(x), fill=INK, font=small, anchor="mt")
    label = x_label + (f"  (chosen: {_fmt(mark)}, dashed)" if mark is not None else "")
    draw.text((width // 2, height - 6), label, fill=INK, font=small, anchor="mb")
    return _save(image, Path(path))


def tradeoff_png(path: str | Path, points: Sequence[tuple[float, float, str]], x_label: str, y_label: str, title: str,
                 chosen: int | None = None, size: tuple[int, int] = TRADEOFF_SIZE) -> Path:
    """``points`` (x, y, label) joined in order; the ``chosen`` index ringed."""
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    small, big = _font(12), _font(16)
    top = _title(draw, width, title, big) + 24
    finite = [(x, y, label) for x, y, label in points if math.isfinite(x) and math.isfinite(y)]
    box = _Box(_MARGIN_LEFT, top, width - _MARGIN_RIGHT, height - 50,
               _range([p[0] for p in finite] or [0.0]), _range([p[1] for p in finite] or [0.0]))
    box.frame(draw, small)
    for frac in (0.0, 0.5, 1.0):
        value = box.xr[0] + frac * (box.xr[1] - box.xr[0])
        px, _ = box.at(value, box.yr[0])
        draw.text((px, box.bottom + 4), _fmt(value), fill=INK, font=small, anchor="mt")
    pixels = [box.at(x, y) for x, y, _ in finite]
    if len(pixels) > 1:
        draw.line(pixels, fill=LINE, width=2)
    for index, ((px, py), (_, _, label)) in enumerate(zip(pixels, finite)):
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=LINE)
        draw.text((px + 7, py - 7), label, fill=INK, font=small, anchor="ld")
        if index == chosen:
            draw.ellipse([px - 10, py - 10, px + 10, py + 10], outline=MARK, width=3)
    draw.text((width // 2, height - 6), x_label, fill=INK, font=small, anchor="mb")
    draw.text((6, top - 12), y_label, fill=INK, font=small, anchor="lm")
    return _save(image, Path(path))
