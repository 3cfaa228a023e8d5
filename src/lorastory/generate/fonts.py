"""Finding a font that can draw Chinese (and Japanese, Korean) captions.

Pillow's built-in font has no CJK glyphs: Chinese text comes out as boxes
("tofu"). :func:`cjk_font` looks, in order, at

1. the file named by the ``LORASTORY_CJK_FONT`` environment variable;
2. font packages installed from PyPI: ``manimgx-fonts-cjk`` (Noto Sans CJK),
   ``pylopdf-fonts-zh-cn`` (Noto Sans SC), ``paperang-p2-fonts-cjk``
   (WenQuanYi Micro Hei, 5 MB, the one lorastory depends on);
3. the usual system locations (Debian/Ubuntu ``fonts-noto-cjk`` and
   ``fonts-wqy-*``, Fedora, Arch, macOS, Windows);

and falls back to Pillow's default font with a warning when none is found.
Packages are located with :func:`importlib.util.find_spec`, which finds their
folder without importing (running) them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

from lorastory.errors import ConfigError

FONT_ENV = "LORASTORY_CJK_FONT"

INSTALL_HINT = (
    "pip install paperang-p2-fonts-cjk (or manimgx-fonts-cjk), "
    f"apt-get install fonts-noto-cjk, or set {FONT_ENV}=/path/to/a/CJK/font"
)

# (import name, file inside the package), best-looking first.
_PACKAGE_FONTS: tuple[tuple[str, str], ...] = (
    ("manimgx_fonts_cjk", "NotoSansCJK-VF.otf.ttc"),
    ("pylopdf_fonts_zh_cn", "NotoSansSC-Regular.otf"),
    ("paperang_p2_fonts_cjk", "fonts/wqy-microhei.ttc"),
)

_WINDOWS_FONTS = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"

_SYSTEM_FONTS: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        # Debian / Ubuntu: fonts-noto-cjk, fonts-wqy-microhei, fonts-wqy-zenhei, fonts-droid-fallback
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
        "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
        # Fedora / Arch / openSUSE
        "/usr/share/fonts/google-noto-sans-cjk-vf-fonts/NotoSansCJK-VF.ttc",
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/opentype/noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/adobe-source-han-sans/SourceHanSansSC-Regular.otf",
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
        "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
        "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
        "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
        "/usr/share/fonts/truetype/arphic/uming.ttc",
        # macOS
        "/System/Library/Fonts/PingFang.ttc",
        "/System/Library/Fonts/Hiragino Sans GB.ttc",
        "/System/Library/Fonts/STHeiti Medium.ttc",
        "/Library/Fonts/Arial Unicode.ttf",
    )
) + tuple(_WINDOWS_FONTS / name for name in ("msyh.ttc", "msyh.ttf", "simhei.ttf", "simsun.ttc"))

# In a collection (.ttc), a face whose family name says Simplified Chinese wins.
_SIMPLIFIED_MARKERS = (" SC ", " CN ", " GB ", " Micro Hei ", " Zen Hei ", " YaHei ")
_MAX_FACES = 16


@dataclass(frozen=True)
class FontSource:
    """A font file that draws CJK text: which face of a collection, and where it came from."""

    path: Path
    index: int = 0
    origin: str = ""


def _package_font(module: str, relative: str) -> Path | None:
    """The font file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    return None


def _simplified_face(path: Path) -> int:
    """Index of the Simplified Chinese face of a font collection; 0 for a single font."""
    if path.suffix.lower() not in (".ttc", ".otc"):
        return 0
    for index in range(_MAX_FACES):
        try:
            family, _style = ImageFont.truetype(str(path), 12, index=index).getname()
        except OSError:
            break
        if family and any(marker in f" {family} " for marker in _SIMPLIFIED_MARKERS):
            return index
    return 0


def _source(path: Path, origin: str) -> FontSource:
    return FontSource(path, _simplified_face(path), origin)


def _from_environment() -> FontSource | None:
    value = os.environ.get(FONT_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        ImageFont.truetype(str(path), 12)
    except OSError as err:
        raise ConfigError(
            f"{FONT_ENV}={value}: cannot open it as a font ({err}); point it at a .ttf/.otf/.ttc file or unset it"
        ) from None
    return _source(path, f"${FONT_ENV}")


def find_cjk_font() -> FontSource | None:
    """The first CJK-capable font found (environment, packages, system); ``None`` if none."""
    explicit = _from_environment()
    if explicit is not None:
        return explicit
    for module, relative in _PACKAGE_FONTS:
        path = _package_font(module, relative)
        if path is not None:
            return _source(path, f"package {module}")
    for path in _SYSTEM_FONTS:
        if path.is_file():
            return _source(path, "system")
    return None


def _regular_weight(font: ImageFont.FreeTypeFont) -> None:
    """Set a variable font to its Regular instance.

    Noto Sans CJK's variable font defaults to its Thin instance (weight 100),
    which is barely legible in captions.
    """
    try:
        names = font.get_variation_names()
        axes = font.get_variation_axes()
    except (OSError, NotImplementedError, AttributeError):
        return  # not a variable font (or FreeType built without variation support)
    if b"Regular" in names:
        font.set_variation_by_name("Regular")
        return
    values: list[float] = []
    for axis in axes:
        low, high = float(axis["minimum"] or 0), float(axis["maximum"] or 0)
        value = float(axis["default"] or low)
        if axis.get("name") in (b"Weight", "Weight"):
            value = min(max(400.0, low), high)
        values.append(value)
    font.set_variation_by_axes(values)


def load_font(source: FontSource, size: int) -> ImageFont.FreeTypeFont:
    """Open ``source`` at ``size`` pixels, variable fonts at their Regular weight."""
    font = ImageFont.truetype(str(source.path), size, index=source.index)
    _regular_weight(font)
    return font


def cjk_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels that draws Chinese; Pillow's default font (with a warning) if none is found."""
    if size < 1:
        raise ConfigError(f"font size must be at least 1 pixel, got {size}")
    source = find_cjk_font()
    if source is not None:
        try:
            return load_font(source, size)
        except OSError as err:
            warnings.warn(f"cannot open the CJK font {source.path} ({err}); {INSTALL_HINT}", stacklevel=2)
    else:
        warnings.warn(
            f"no CJK font found: Chinese, Japanese and Korean text will render as boxes; {INSTALL_HINT}",
            stacklevel=2,
        )
    return ImageFont.load_default(size)
