"""The library's messages in the web app's words: form fields and tick boxes instead of CLI flags,
and no pydantic boilerplate ("Value error, ...").

The library words its one-line errors for the command line; the app shows the same errors, so
it rewrites the few phrases that name a flag into what a user of the page clicks or fills in.
"""

from __future__ import annotations

import re

RESUME = "'resume from the newest checkpoint'"

# Whole phrases first (their flags mean something particular there), then single flags.
PHRASES = (
    ("pass --resume to continue or choose a new --out", f"tick {RESUME} to continue, or choose another run name"),
    ("(pass --caption TEXT, add a .txt file, or --allow-empty-caption)",
     "(enter a fallback caption, add a .txt file, or tick 'Keep pictures without a caption')"),
    ("start a new --out folder", "choose another run name"),
    ("choose a new --out", "choose another run name"),
    ("lower --lr", "lower the learning rate"),
)
FLAGS = {
    "--resume": f"the {RESUME} box",
    "--caption": "the fallback caption",
    "--allow-empty-caption": "'Keep pictures without a caption'",
    "--out": "the run name",
    "--lr": "the learning rate",
    "--lora-scale": "the LoRA scale",
    "--model": "the model",
    "--data": "the training folder",
    "--rank": "rank",
    "--seed": "seed",
    "--batch-size": "batch size",
    "--checkpoint-every": "'checkpoint every'",
    "--base-dtype": "base dtype",
    "--offload": "'offload'",
}
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
_PYDANTIC = re.compile(r"\b(?:Value|Assertion) error, ")


def ui_words(text: str) -> str:
    """``text`` with CLI flags named as the app's fields and pydantic's prefixes removed."""
    for phrase, words in PHRASES:
        text = text.replace(phrase, words)
    text = _PYDANTIC.sub("", text)
    return _FLAG.sub(lambda m: FLAGS.get(m.group(0), f"the '{m.group(1).replace('-', ' ')}' setting"), text)
