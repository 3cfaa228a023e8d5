"""Data-Juicer's word helpers (``ops/common/helper_func.py``), so text ops split and strip words as it does.

``SPECIAL_CHARACTERS`` is Data-Juicer's set: ASCII punctuation, digits and
whitespace, its list of other symbols, and the emoji of ``emoji`` 2.2.0 (the
version it pins). Only single code points matter, since the set is tested one
character at a time, so the emoji are kept here as code point ranges instead
of a dependency on that exact package version.
"""

from __future__ import annotations

import string

import regex

from lorastory.errors import ConfigError

OTHER_SPECIAL_CHARACTERS = (
    "\x92\u2009\x93\x97\u200a\x9d\x99\u202f\x96\u2005\x95\x91\x9c\u3000\u2002 \u2008\x98\x81\u2003\x82￼\x83\x84"
    "’“”–ー一▬…✦�\xad£\u200b•€«»°·═×士＾˘⇓↓↑←→（）§″′´¿−±∈\ufeff¢ø‚„½¼¾¹²³―⁃，ˌ¸‹›ʺˈʻ¦‐⠀‰\x85\x85‑≤≥‖"
    "◆●■►▼▲▴∆▻¡★☆✱ːº。¯˜¥ɪ≈†上ン：∼⁄・♡✓⊕․．⋅÷１‟；،、¨ाাी्े◦˚゜ʼ≖ʼ¤ッツシ℃√！【】‿∞➤～πه۩☛₨➩☻๑٪♥ıॽ《‘©﴿٬？▷Г♫∟™ª₪®「—❖」﴾》"
)

# Single-code-point emoji of emoji 2.2.0, as hex ranges.
_EMOJI_RANGES = (
    "a9 ae 203c 2049 2122 2139 2194-2199 21a9-21aa 231a-231b 2328 23cf 23e9-23f3 23f8-23fa 24c2 25aa-25ab "
    "25b6 25c0 25fb-25fe 2600-2604 260e 2611 2614-2615 2618 261d 2620 2622-2623 2626 262a 262e-262f "
    "2638-263a 2640 2642 2648-2653 265f-2660 2663 2665-2666 2668 267b 267e-267f 2692-2697 2699 269b-269c "
    "26a0-26a1 26a7 26aa-26ab 26b0-26b1 26bd-26be 26c4-26c5 26c8 26ce-26cf 26d1 26d3-26d4 26e9-26ea "
    "26f0-26f5 26f7-26fa 26fd 2702 2705 2708-270d 270f 2712 2714 2716 271d 2721 2728 2733-2734 2744 2747 "
    "274c 274e 2753-2755 2757 2763-2764 2795-2797 27a1 27b0 27bf 2934-2935 2b05-2b07 2b1b-2b1c 2b50 2b55 "
    "3030 303d 3297 3299 1f004 1f0cf 1f170-1f171 1f17e-1f17f 1f18e 1f191-1f19a 1f201-1f202 1f21a 1f22f "
    "1f232-1f23a 1f250-1f251 1f300-1f321 1f324-1f393 1f396-1f397 1f399-1f39b 1f39e-1f3f0 1f3f3-1f3f5 "
    "1f3f7-1f4fd 1f4ff-1f53d 1f549-1f54e 1f550-1f567 1f56f-1f570 1f573-1f57a 1f587 1f58a-1f58d 1f590 "
    "1f595-1f596 1f5a4-1f5a5 1f5a8 1f5b1-1f5b2 1f5bc 1f5c2-1f5c4 1f5d1-1f5d3 1f5dc-1f5de 1f5e1 1f5e3 "
    "1f5e8 1f5ef 1f5f3 1f5fa-1f64f 1f680-1f6c5 1f6cb-1f6d2 1f6d5-1f6d7 1f6dc-1f6e5 1f6e9 1f6eb-1f6ec "
    "1f6f0 1f6f3-1f6fc 1f7e0-1f7eb 1f7f0 1f90c-1f93a 1f93c-1f945 1f947-1f9ff 1fa70-1fa7c 1fa80-1fa88 "
    "1fa90-1fabd 1fabf-1fac5 1face-1fadb 1fae0-1fae8 1faf0-1faf8 "
)


def _emoji() -> set[str]:
    chars = set()
    for part in _EMOJI_RANGES.split():
        low, _, high = part.partition("-")
        chars.update(chr(c) for c in range(int(low, 16), int(high or low, 16) + 1))
    return chars


SPECIAL_CHARACTERS: frozenset[str] = frozenset(
    set(string.punctuation + string.digits + string.whitespace + OTHER_SPECIAL_CHARACTERS) | _emoji()
)

VARIOUS_WHITESPACES = frozenset(
    {
        " ", "\t", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008",
        "\u2009", "\u200a", "\xa0", "\u202f", "\u205f", "\u3000", "\u200b", "\u200c", "\u200d", "\u2060",
        "￼", "\x84",
    }
)


def strip(text: str, chars: frozenset[str] | set[str] | str) -> str:
    """``text`` without the leading and trailing characters that are in ``chars``."""
    start, end = 0, len(text)
    while start < end and text[start] in chars:
        start += 1
    while end > start and text[end - 1] in chars:
        end -= 1
    return text[start:end]


def split_on_whitespace(text: str, new_line: bool = False, tab: bool = False) -> list[str]:
    """Non-empty pieces of ``text`` split on spaces (and newlines, tabs when asked)."""
    separators = " " + ("\n" if new_line else "") + ("\t" if tab else "")
    return [word for word in regex.split("[" + separators + "]", text) if word]


def split_on_newline_tab_whitespace(text: str) -> list[list[list[str]]]:
    """Lines, then tab-separated parts, then words: the structure the word-removing mappers rebuild."""
    return [[split_on_whitespace(part) for part in line.split("\t")] for line in text.split("\n")]


def merge_on_whitespace_tab_newline(lines: list[list[list[str]]]) -> str:
    """The inverse of :func:`split_on_newline_tab_whitespace`; empty parts and lines disappear, as in Data-Juicer."""
    joined = [[" ".join(words) for words in line if words] for line in lines]
    return "\n".join("\t".join(line) for line in joined if line)


def get_words(text: str) -> list[str]:
    """Words split on space, newline and tab (Data-Juicer's ``get_words_from_document`` without a tokenizer)."""
    return split_on_whitespace(text, new_line=True, tab=True)


def words_refinement(
    words: list[str],
    lower_case: bool = False,
    strip_chars: frozenset[str] | None = None,
    use_words_aug: bool = False,
    words_aug_group_sizes: list[int] | tuple[int, ...] = (2,),
    words_aug_join_char: str = "",
) -> list[str]:
    """Lower-case, strip special characters, drop empties, then add n-gram "augmented" words when asked."""
    if lower_case:
        words = [word.lower() for word in words]
    if strip_chars:
        words = [word for word in (strip(word, strip_chars) for word in words) if word]
    if use_words_aug:
        words = words + [
            words_aug_join_char.join(words[i : i + size])
            for size in words_aug_group_sizes
            for i in range(len(words) - size + 1)
        ]
    return words


def dj_pattern(pattern: str) -> str:
    """A recipe's regular expression as Data-Juicer reads it: ``r'...'`` or ``r"..."`` around it is dropped."""
    if len(pattern) > 2 and pattern[:2] in ("r'", 'r"') and pattern[-1] == pattern[1]:
        return pattern[2:-1]
    return pattern


def compile_pattern(pattern: str, flags: int = regex.DOTALL) -> regex.Pattern:
    """Compile ``pattern`` (after :func:`dj_pattern`); a bad one is a ``ValueError`` naming the problem."""
    try:
        return regex.compile(dj_pattern(pattern), flags)
    except regex.error as err:
        raise ValueError(f"not a valid regular expression ({err})") from None


def hash_text(text: str, lowercase: bool, ignore: regex.Pattern | None) -> str:
    """The text a near-duplicate op hashes: lower-cased when asked, ``ignore_pattern``'s matches removed."""
    if lowercase:
        text = text.lower()
    return ignore.sub("", text) if ignore is not None else text


def load_sentencepiece(path: str | None, op_name: str) -> object:
    """A sentencepiece model from a local ``.model`` file, for ``tokenization: true``.

    Data-Juicer downloads ``<lang>.sp.model`` at run time; lorastory never downloads, so the
    recipe names the file (``sp_model_path``). Refused in one line when it is missing.
    """

    if not path:
        raise ConfigError(
            f"{op_name}: tokenization: true needs sp_model_path, a local sentencepiece .model file "
            "(Data-Juicer downloads one per language; lorastory does not)"
        )
    import os

    if not os.path.isfile(os.path.expanduser(path)):
        raise ConfigError(f"{op_name}: sp_model_path {path}: no such file")
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=os.path.expanduser(path))
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"{op_name}: sp_model_path {path} is not a sentencepiece model ({err})") from None


def document_words(text: str, sp_model: object | None) -> list[str]:
    """Words as Data-Juicer's word filters see them: sentencepiece pieces, or whitespace-split words."""
    if sp_model is not None:
        return sp_model.encode_as_pieces(text)  # type: ignore[attr-defined]
    return get_words(text)
