"""Draw a scene in a render style with Pillow: flat, outlined comic, pixel art or watercolour.

Everything is laid out in unit coordinates (0..1 of the picture's side) and
drawn at twice the size, then reduced, so edges are anti-aliased; pixel art is
drawn at 32 px without smoothing and enlarged. The same scene, style, size and
seed give the same pixels.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFilter

from lorastory.toyworld.scene import Character, Scene, Shape
from lorastory.toyworld.vocab import COLOURS, STYLES

RGB = tuple[int, int, int]

SKY = {"day": (150, 205, 240), "night": (22, 32, 70)}
GROUND = {
    ("grass", "day"): (110, 190, 90), ("grass", "night"): (40, 85, 45),
    ("sand", "day"): (232, 210, 150), ("sand", "night"): (110, 100, 75),
    ("snow", "day"): (240, 244, 250), ("snow", "night"): (170, 180, 200),
}
HORIZON = 0.75
X_OF = {"left": 0.22, "center": 0.5, "right": 0.78}
SKIN, LEGS = (241, 200, 165), (50, 50, 70)
MOON = (245, 240, 200)
NIGHT_STARS = ((0.08, 0.08), (0.3, 0.05), (0.45, 0.16), (0.62, 0.07), (0.7, 0.22), (0.93, 0.3), (0.2, 0.24))
PIXEL_GRID = 32
SUPERSAMPLE = 2


class _Pen:
    """ImageDraw in unit coordinates, with an optional outline for every filled primitive."""

    def __init__(self, image: Image.Image, outline: bool) -> None:
        self.draw = ImageDraw.Draw(image)
        self.side = image.width
        self.outline: RGB | None = (0, 0, 0) if outline else None
        self.width = max(1, round(0.016 * self.side)) if outline else 0

    def _xy(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.side, y * self.side) for x, y in points]

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        self.draw.rectangle(self._xy([(x0, y0), (x1, y1)]), fill=fill, outline=self.outline, width=self.width)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
        self.draw.ellipse(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), fill=fill, outline=self.outline, width=self.width)

    def polygon(self, points: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon(self._xy(points), fill=fill, outline=self.outline, width=self.width)

    def pieslice(self, cx: float, cy: float, r: float, start: float, end: float, fill: RGB) -> None:
        box = self._xy([(cx - r, cy - r), (cx + r, cy + r)])
        self.draw.pieslice(box, start, end, fill=fill, outline=self.outline, width=self.width)


def _background(pen: _Pen, scene: Scene) -> None:
    pen.draw.rectangle([(0, 0), (pen.side, pen.side)], fill=SKY[scene.time])
    pen.rect(-0.1, HORIZON, 1.1, 1.1, GROUND[(scene.ground, scene.time)])
    if scene.time == "night":
        pen.ellipse(0.86, 0.13, 0.065, 0.065, MOON)
        for x, y in NIGHT_STARS:
            pen.draw.ellipse(pen._xy([(x - 0.008, y - 0.008), (x + 0.008, y + 0.008)]), fill=(255, 255, 230))


def _tree(pen: _Pen, x: float) -> None:
    pen.rect(x - 0.025, 0.58, x + 0.025, 0.8, COLOURS["brown"].rgb)
    pen.ellipse(x, 0.5, 0.11, 0.12, (34, 120, 48))


def _house(pen: _Pen, x: float) -> None:
    pen.rect(x - 0.1, 0.6, x + 0.1, 0.8, (230, 200, 160))
    pen.polygon([(x - 0.13, 0.6), (x + 0.13, 0.6), (x, 0.46)], (170, 60, 50))
    pen.rect(x - 0.025, 0.69, x + 0.025, 0.8, (110, 70, 40))


def _character(pen: _Pen, c: Character, x: float) -> None:
    hair, shirt = COLOURS[c.hair_colour].rgb, COLOURS[c.shirt_colour].rgb
    if c.hair == "long":  # hair falling behind the shoulders
        pen.rect(x - 0.1, 0.37, x + 0.1, 0.57, hair)
    pen.rect(x - 0.06, 0.69, x - 0.015, 0.86, LEGS)
    pen.rect(x + 0.015, 0.69, x + 0.06, 0.86, LEGS)
    pen.polygon([(x - 0.09, 0.48), (x - 0.15, 0.64), (x - 0.12, 0.66), (x - 0.07, 0.55)], SKIN)
    pen.polygon([(x + 0.09, 0.48), (x + 0.15, 0.64), (x + 0.12, 0.66), (x + 0.07, 0.55)], SKIN)
    pen.polygon([(x - 0.09, 0.47), (x + 0.09, 0.47), (x + 0.11, 0.71), (x - 0.11, 0.71)], shirt)
    pen.ellipse(x, 0.39, 0.085, 0.085, SKIN)
    pen.pieslice(x, 0.385, 0.095, 180, 360, hair)
    for dx in (-0.03, 0.03):
        pen.draw.ellipse(pen._xy([(x + dx - 0.011, 0.405 - 0.011), (x + dx + 0.011, 0.405 + 0.011)]), fill=(20, 20, 20))


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _shape(pen: _Pen, s: Shape, x: float) -> None:
    r = 0.19 if s.size == "large" else 0.1
    y = 0.47
    fill = COLOURS[s.colour].rgb
    if s.shape == "circle":
        pen.ellipse(x, y, r, r, fill)
    elif s.shape == "square":
        pen.rect(x - 0.85 * r, y - 0.85 * r, x + 0.85 * r, y + 0.85 * r, fill)
    elif s.shape == "triangle":
        pen.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill)
    elif s.shape == "star":
        pen.polygon(_star(x, y + 0.1 * r, 1.1 * r), fill)
    else:  # heart: two lobes over a point
        lobe = 0.52 * r
        pen.polygon([(x - 0.98 * r, y - 0.2 * r), (x + 0.98 * r, y - 0.2 * r), (x, y + r)], fill)
        pen.ellipse(x - lobe, y - 0.35 * r, lobe, lobe, fill)
        pen.ellipse(x + lobe, y - 0.35 * r, lobe, lobe, fill)


def _draw(scene: Scene, side: int, outline: bool) -> Image.Image:
    image = Image.new("RGB", (side, side))
    pen = _Pen(image, outline)
    _background(pen, scene)
    if scene.object is not None:
        (_tree if scene.object == "tree" else _house)(pen, X_OF[scene.object_position])  # type: ignore[index]
    x = X_OF[scene.position]
    if isinstance(scene.subject, Character):
        _character(pen, scene.subject, x)
    else:
        _shape(pen, scene.subject, x)
    return image


def _watercolour(image: Image.Image, seed: int) -> Image.Image:
    """Washed-out colours that bleed at the edges, on grainy paper."""
    import numpy as np

    rng = np.random.default_rng(seed)
    side = image.width
    soft = np.asarray(image.filter(ImageFilter.GaussianBlur(side / 90)), dtype=np.float32)
    washed = 0.75 * soft + 0.25 * 255.0
    blotch = Image.fromarray((rng.random((side // 8, side // 8)) * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    blotches = (np.asarray(blotch, dtype=np.float32)[..., None] / 255.0 - 0.5) * 18.0
    grain = rng.normal(0.0, 3.0, (side, side, 1)).astype(np.float32)
    edges = np.asarray(image.filter(ImageFilter.FIND_EDGES).convert("L").filter(ImageFilter.GaussianBlur(side / 128)), dtype=np.float32)
    out = washed + blotches + grain - 0.35 * edges[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def render(scene: Scene, style: str = "flat", size: int = 128, seed: int = 0) -> Image.Image:
    """``scene`` drawn as a ``size``×``size`` RGB picture in ``style`` (one of STYLES)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    if style == "pixel":
        return _draw(scene, PIXEL_GRID, outline=False).resize((size, size), Image.NEAREST)
    image = _draw(scene, size * SUPERSAMPLE, outline=style == "outlined").resize((size, size), Image.LANCZOS)
    return _watercolour(image, seed) if style == "watercolor" else image
