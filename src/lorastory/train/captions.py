"""Captions at training time: trigger word, prefix/suffix, tag shuffling, caption dropout.

A training caption is built from the folder's caption in a fixed order::

    trigger word, prefix, first ``keep_tags`` tags, the other tags (shuffled), suffix

joined with ", " (empty parts left out). Tags are the caption's comma-separated pieces (``,`` or the
full-width ``，`` of Chinese captions, which are then joined with ``，``); a caption without commas is
one tag. The trigger word is always first: a caption that already holds it as a tag has it moved to
the front, not repeated.

Every random choice is seeded by the run seed and the sample's draw in its epoch
(:func:`caption_rng`), never by a shared generator, so a run is reproducible and a resumed
run draws exactly what the uninterrupted one drew.

The text encoders are frozen in most runs, so captions are encoded once into the cache. To keep
that working with shuffling, each caption gets ``variants`` seeded permutations
(:func:`caption_texts`), all cached; each draw picks one of them. Dropout picks the empty prompt,
cached once. With ``train_text_encoder`` the captions are encoded live at every step anyway, so
each draw gets a fresh permutation (:func:`fresh_caption`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionSettings:
    """How one dataset's captions are turned into training captions."""

    trigger_word: str = ""
    prefix: str = ""
    suffix: str = ""
    dropout: float = 0.0  # probability that a draw trains on the empty prompt
    shuffle: bool = False
    keep_tags: int = 0  # leading tags kept in place when shuffling
    variants: int = 1  # shuffled versions cached per caption


_COMMAS = re.compile(r"[,，]")


def split_tags(caption: str) -> list[str]:
    """The comma-separated tags of a caption (``,`` or ``，``), stripped, empty ones left out."""
    return [tag.strip() for tag in _COMMAS.split(caption) if tag.strip()]


def _joiner(caption: str) -> str:
    """How a caption's tags are joined again: as its own commas where they are all full-width."""
    return "，" if "，" in caption and "," not in caption else ", "


def _assemble(caption: str, settings: CaptionSettings, rng: random.Random | None) -> str:
    """The training caption (see the module's docstring); ``rng`` shuffles the tags after the kept ones."""
    tags = _own_tags(caption, settings)
    kept, rest = tags[: settings.keep_tags], tags[settings.keep_tags :]
    if rng is not None:
        rng.shuffle(rest)
    parts = [settings.trigger_word.strip(), settings.prefix.strip(), *kept, *rest, settings.suffix.strip()]
    return _joiner(caption).join(part for part in parts if part)


def _own_tags(caption: str, settings: CaptionSettings) -> list[str]:
    trigger = settings.trigger_word.strip()
    return [tag for tag in split_tags(caption) if not trigger or tag != trigger]


def caption_texts(caption: str, settings: CaptionSettings, seed: int) -> list[str]:
    """The texts a caption trains with (before dropout): one, or up to ``variants`` distinct shuffles.

    A caption without anything to change comes back as it is (so its cache entry is the one an
    older run wrote). Shuffle ``k`` of a caption is seeded by the run seed, ``k`` and the caption.
    """
    if not (settings.trigger_word.strip() or settings.prefix.strip() or settings.suffix.strip() or settings.shuffle):
        return [caption]
    if not settings.shuffle:
        return [_assemble(caption, settings, None)]
    texts = [_assemble(caption, settings, random.Random(f"shuffle/{seed}/{k}/{caption}")) for k in range(settings.variants)]
    return list(dict.fromkeys(texts))


def caption_rng(seed: int, epoch: int, draw: int) -> random.Random:
    """The generator of one draw's caption choices (dropout, which shuffle)."""
    return random.Random(f"caption/{seed}/{epoch}/{draw}")


def choose_text(count: int, dropout: float, seed: int, epoch: int, draw: int) -> int | None:
    """Which of a caption's ``count`` cached texts draw ``draw`` trains with; ``None``: the empty prompt."""
    if not dropout and count == 1:
        return 0
    rng = caption_rng(seed, epoch, draw)
    if dropout and rng.random() < dropout:
        return None
    return rng.randrange(count) if count > 1 else 0


def fresh_caption(caption: str, settings: CaptionSettings, seed: int, epoch: int, draw: int) -> str:
    """A draw's caption built live (text encoders being trained): dropout, then a fresh shuffle."""
    if not (settings.dropout or settings.shuffle):
        return caption_texts(caption, settings, seed)[0]
    rng = caption_rng(seed, epoch, draw)
    if settings.dropout and rng.random() < settings.dropout:
        return ""
    return _assemble(caption, settings, rng if settings.shuffle else None)
