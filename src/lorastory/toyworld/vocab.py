"""The toy world's words: every attribute with its Chinese and English names and its colour."""

from __future__ import annotations

from typing import NamedTuple

LANGUAGES = ("en", "zh")


class Word(NamedTuple):
    en: str
    zh: str


class Colour(NamedTuple):
    en: str
    zh: str
    rgb: tuple[int, int, int]


COLOURS: dict[str, Colour] = {
    "red": Colour("red", "红色", (214, 40, 40)),
    "orange": Colour("orange", "橙色", (247, 127, 0)),
    "yellow": Colour("yellow", "黄色", (252, 206, 20)),
    "green": Colour("green", "绿色", (56, 158, 60)),
    "blue": Colour("blue", "蓝色", (33, 96, 214)),
    "purple": Colour("purple", "紫色", (128, 60, 170)),
    "pink": Colour("pink", "粉色", (245, 130, 180)),
    "white": Colour("white", "白色", (245, 245, 245)),
    "black": Colour("black", "黑色", (30, 30, 30)),
    "brown": Colour("brown", "棕色", (120, 72, 36)),
}

SHAPES: dict[str, Word] = {
    "circle": Word("circle", "圆形"),
    "square": Word("square", "方形"),
    "triangle": Word("triangle", "三角形"),
    "star": Word("star", "星形"),
    "heart": Word("heart", "心形"),
}

# Hair length decides the character noun, so a story can say "girl" or "boy" and be drawn.
CHARACTERS: dict[str, Word] = {"long": Word("girl", "女孩"), "short": Word("boy", "男孩")}

POSITIONS: dict[str, Word] = {
    "left": Word("on the left", "在左边"),
    "center": Word("in the middle", "在中间"),
    "right": Word("on the right", "在右边"),
}
# "a tree on the right" / "右边有一棵树": the object phrase names the side first in Chinese.
SIDES_ZH = {"left": "左边", "center": "中间", "right": "右边"}

SIZES: dict[str, Word] = {"small": Word("small", "小"), "large": Word("big", "大")}

OBJECTS: dict[str, Word] = {"tree": Word("a tree", "一棵树"), "house": Word("a house", "一座房子")}

GROUNDS: dict[str, Word] = {
    "grass": Word("on the grass", "草地上"),
    "sand": Word("on the sand", "沙滩上"),
    "snow": Word("in the snow", "雪地里"),
}

TIMES: dict[str, Word] = {"day": Word("during the day", "白天"), "night": Word("at night", "夜晚")}

STYLES: dict[str, Word] = {
    "flat": Word("flat style", "扁平风格"),
    "outlined": Word("comic style with black outlines", "黑色描边的漫画风格"),
    "pixel": Word("pixel art", "像素风格"),
    "watercolor": Word("watercolor painting", "水彩画风格"),
}
