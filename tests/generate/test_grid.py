"""Storyboards: the reference 2x4 layout, mixed panel sizes, Chinese captions drawn with a
real CJK font (not boxes), the fallback warning, and the files written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFont

from lorastory.errors import BadImageError, ConfigError
from lorastory.generate import fonts
from lorastory.generate.grid import (
    default_font_size,
    grid_shape,
    line_height,
    make_storyboard,
    save_storyboard,
    wrap_text,
)

WHITE = (255, 255, 255)


def _solid(color, size=(64, 64)):
    return Image.new("RGB", size, color)


def _colors(n):
    return [(20 * i, 255 - 20 * i, (70 * i) % 256) for i in range(n)]


def _caption_strip(board: Image.Image, panel_height: int) -> np.ndarray:
    """The pixels under the first row of panels (the first caption strip), as a greyscale array."""
    return np.asarray(board.convert("L"))[panel_height:, :]


@pytest.fixture
def no_cjk_font(monkeypatch):
    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)


def test_a_cjk_font_is_installed():
    source = fonts.find_cjk_font()
    assert source is not None, f"no CJK font found; {fonts.INSTALL_HINT}"
    assert source.path.is_file()


# --------------------------------------------------------------------------- layout


def test_default_layout_is_the_reference_two_by_four():
    colors = _colors(8)
    board = make_storyboard([_solid(c) for c in colors])
    assert board.size == (128, 256)
    pixels = np.asarray(board)
    for index, color in enumerate(colors):
        row, col = divmod(index, 2)
        cell = pixels[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]
        assert (cell == color).all(), f"panel {index} is not at row {row}, column {col}"


def test_resize_to_reproduces_the_reference_workflow_image():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8) for _ in range(8)]
    # The reference notebook's last cell, verbatim in effect.
    expected = Image.fromarray(
        np.concatenate([np.concatenate(arrays[i : i + 2], axis=1) for i in range(0, 8, 2)], axis=0)
    ).resize((1024, 2048))
    board = make_storyboard([Image.fromarray(a) for a in arrays], resize_to=(1024, 2048))
    assert board.size == (1024, 2048)
    assert np.array_equal(np.asarray(board), np.asarray(expected))


@pytest.mark.parametrize(
    ("count", "cols", "rows", "shape"),
    [(8, 2, None, (2, 4)), (5, 2, None, (2, 3)), (1, 4, None, (1, 1)), (3, 4, None, (3, 1)), (2, 3, 2, (3, 2))],
)
def test_grid_shape(count, cols, rows, shape):
    assert grid_shape(count, cols, rows) == shape


def test_partial_last_row_is_background():
    board = make_storyboard([_solid((255, 0, 0))] * 3, cols=2, background=(0, 0, 255))
    assert board.size == (128, 128)
    assert board.getpixel((32, 96)) == (255, 0, 0)
    assert board.getpixel((96, 96)) == (0, 0, 255)


def test_spacing_frames_and_separates_cells():
    board = make_storyboard([_solid((255, 0, 0))] * 4, cols=2, spacing=10, background=(0, 255, 0))
    assert board.size == (2 * 64 + 3 * 10, 2 * 64 + 3 * 10)
    assert board.getpixel((5, 5)) == (0, 255, 0)  # frame
    assert board.getpixel((10 + 64 + 5, 40)) == (0, 255, 0)  # gutter between columns
    assert board.getpixel((10, 10)) == (255, 0, 0)
    assert board.getpixel((10 + 64 + 10, 10 + 64 + 10)) == (255, 0, 0)


def test_mixed_sizes_fit_cells_keeping_aspect_centred():
    wide, tall = _solid((255, 0, 0), (100, 50)), _solid((0, 0, 255), (40, 100))
    board = make_storyboard([wide, tall], cols=2, background=(0, 0, 0))
    assert board.size == (200, 100)  # cells are max width x max height
    assert board.getpixel((50, 10)) == (0, 0, 0) and board.getpixel((50, 50)) == (255, 0, 0)  # letterboxed
    assert board.getpixel((50, 24)) == (0, 0, 0) and board.getpixel((50, 26)) == (255, 0, 0)  # 25 px bands
    assert board.getpixel((100 + 20, 50)) == (0, 0, 0)  # pillarboxed: 30 px bands either side
    assert board.getpixel((100 + 50, 50)) == (0, 0, 255)


def test_cell_size_scales_panels_up_and_down():
    board = make_storyboard([_solid((255, 0, 0), (20, 10)), _solid((0, 255, 0), (400, 400))], cell_size=(80, 80))
    assert board.size == (160, 80)
    assert board.getpixel((0, 40)) == (255, 0, 0)  # 20x10 scaled up to 80x40, centred
    assert board.getpixel((40, 10)) == WHITE
    assert board.getpixel((120, 40)) == (0, 255, 0)


def test_paths_and_transparency(tmp_path):
    _solid((255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    board = make_storyboard([tmp_path / "a.png", str(tmp_path / "clear.png")], background=(0, 255, 0))
    assert board.getpixel((10, 10)) == (255, 0, 0)
    assert board.getpixel((74, 10)) == (0, 255, 0)  # transparent panel shows the background


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    board = make_storyboard([tmp_path / "phone.jpg"])
    assert board.size == (32, 64)
    top, bottom = board.getpixel((16, 8)), board.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60  # red on top once turned upright
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cols": 0}, "cols must be"),
        ({"rows": 1}, "cannot hold 3 images"),
        ({"captions": ["one"]}, "1 captions for 3 images"),
        ({"spacing": -1}, "spacing"),
        ({"cell_size": (0, 10)}, "cell_size"),
        ({"resize_to": (10,)}, "resize_to"),
        ({"font_size": 0}, "font_size"),
        ({"cell_size": (100_000, 100_000)}, "too large"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_storyboard([_solid(WHITE)] * 3, **kwargs)


def test_no_images_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="at least one image"):
        make_storyboard([])
    with pytest.raises(BadImageError, match=r"missing\.png: file not found"):
        make_storyboard([tmp_path / "missing.png"])
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        make_storyboard([tmp_path / "empty.png"])


# --------------------------------------------------------------------------- text


def _strip_for(caption: str, width: int = 256) -> np.ndarray:
    board = make_storyboard([_solid(WHITE, (width, 64))], cols=1, captions=[caption], font_size=32)
    return _caption_strip(board, 64)


def test_chinese_caption_renders_real_glyphs_not_tofu():
    hair = _strip_for("紫色长发")
    assert hair.shape[0] > 32 and (hair < 128).any(), "the caption strip has no ink"
    assert not np.array_equal(hair, _strip_for("金色短发")), "two Chinese captions render the same: tofu boxes?"
    assert not np.array_equal(hair, _strip_for("\uffff" * 4)), "Chinese renders like a missing glyph"


def test_default_font_draws_tofu_which_the_check_above_would_catch(no_cjk_font):
    with pytest.warns(UserWarning, match="no CJK font found"):
        hair, gold = _strip_for("紫色长发"), _strip_for("金色短发")
    assert (hair < 128).any()
    assert np.array_equal(hair, gold)  # every missing glyph is the same box


def test_missing_font_falls_back_with_a_warning(no_cjk_font):
    with pytest.warns(UserWarning, match="fonts-noto-cjk"):
        board = make_storyboard([_solid(WHITE)] * 2, captions=["第一格", None], title="标题")
    assert board.width == 128 and board.height > 64


def test_font_environment_variable(monkeypatch, tmp_path):
    found = fonts.find_cjk_font()
    assert found is not None
    monkeypatch.setenv(fonts.FONT_ENV, str(found.path))
    chosen = fonts.find_cjk_font()
    assert chosen is not None and chosen.path == found.path and chosen.origin == f"${fonts.FONT_ENV}"
    monkeypatch.setenv(fonts.FONT_ENV, str(tmp_path / "nope.ttf"))
    with pytest.raises(ConfigError, match=fonts.FONT_ENV):
        fonts.cjk_font(20)


def test_no_font_anywhere_returns_none(monkeypatch):
    monkeypatch.delenv(fonts.FONT_ENV, raising=False)
    monkeypatch.setattr(fonts, "_PACKAGE_FONTS", (("lorastory_no_such_font_package", "x.ttf"),))
    monkeypatch.setattr(fonts, "_SYSTEM_FONTS", ())
    assert fonts.find_cjk_font() is None


def test_cjk_font_is_regular_size_asked():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        font = fonts.cjk_font(30)
    assert isinstance(font, ImageFont.FreeTypeFont) and font.size == 30


def test_wrap_chinese_by_width_with_punctuation_rules():
    font = fonts.cjk_font(20)
    text = "二次元，一个紫色长发小女孩穿着粉蓝色连衣裙，在家中阳台上坐着，外面下着雨，双手托着腮，很无聊。"
    lines = wrap_text(text, font, 150)
    assert len(lines) > 3
    assert "".join(lines) == text
    assert all(font.getlength(line) <= 150 for line in lines)
    assert not any(line[0] in "，。" for line in lines)


def test_wrap_keeps_words_whole_and_breaks_only_overlong_ones():
    font = fonts.cjk_font(20)
    lines = wrap_text("a rainy afternoon on the balcony, supercalifragilisticexpialidocious\nnew line", font, 120)
    assert lines[-1] == "new line"
    words = {w for line in lines for w in line.split()}
    assert {"rainy", "afternoon", "balcony,"} <= words
    assert "supercalifragilisticexpialidocious" not in words  # too wide: broken between letters
    assert all(font.getlength(line) <= 120 for line in lines)


def test_captions_share_a_strip_tall_enough_for_the_longest():
    font_size = 20
    short = make_storyboard([_solid(WHITE, (128, 64))] * 2, captions=["短", None], font_size=font_size)
    tall = make_storyboard([_solid(WHITE, (128, 64))] * 2, captions=["短", "很长的说明文字" * 6], font_size=font_size)
    step = line_height(fonts.cjk_font(font_size))
    assert short.height > 64
    assert tall.height - short.height >= 2 * step  # several more lines
    assert (np.asarray(tall.convert("L"))[64:, 128:] < 128).any()  # the long caption is drawn


def test_fixed_caption_height_truncates_with_ellipsis():
    from lorastory.generate.grid import _text_block

    text = "很长的说明文字" * 10
    board = make_storyboard([_solid(WHITE, (128, 64))], captions=[text], caption_height=60, font_size=16)
    assert board.size == (128, 124)
    font = fonts.cjk_font(16)
    [lines], height = _text_block([text], font, 128, 60)
    assert height == 60
    assert 1 <= len(lines) <= (60 - 2 * 5) // line_height(font)
    assert lines[-1].endswith("…") and all(font.getlength(line) <= 128 - 2 * 5 for line in lines)
    [nothing], _ = _text_block([text], font, 128, 5)
    assert nothing == []  # no room for a line: the strip stays blank


def test_title_strip_on_top():
    plain = make_storyboard([_solid((255, 0, 0))] * 2)
    titled = make_storyboard([_solid((255, 0, 0))] * 2, title="雨天的故事")
    other = make_storyboard([_solid((255, 0, 0))] * 2, title="晴天的故事")
    extra = titled.height - plain.height
    assert extra > 0 and titled.width == plain.width
    assert titled.getpixel((5, extra + 5)) == (255, 0, 0)
    assert (np.asarray(titled.convert("L"))[:extra] < 128).any()
    assert not np.array_equal(np.asarray(titled), np.asarray(other))


def test_default_font_size_follows_cell_width():
    assert default_font_size(1024) == 43
    assert default_font_size(64) == 12


# --------------------------------------------------------------------------- files


def test_save_storyboard_png_and_jpeg(tmp_path):
    panels = [_solid(c) for c in _colors(4)]
    board = save_storyboard(panels, tmp_path / "out" / "board.png", title="故事")
    with Image.open(tmp_path / "out" / "board.png") as image:
        assert image.size == board.size and image.text["Title"] == "故事"
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(board))
    save_storyboard(panels, tmp_path / "board.jpg", resize_to=(64, 64))
    with Image.open(tmp_path / "board.jpg") as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.jpg", "out"]


def test_save_storyboard_rejects_unknown_extension(tmp_path):
    with pytest.raises(ConfigError, match="unknown image extension"):
        save_storyboard([_solid(WHITE)], tmp_path / "board.xyz")
    assert not list(tmp_path.iterdir())
