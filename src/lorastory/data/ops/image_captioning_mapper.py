"""``image_captioning_mapper``: new rows whose text is a caption of their pictures, as Data-Juicer writes them.

Data-Juicer 1.6.1's operator, same name, parameters and semantics:
``hf_img2seq`` names the captioner (here any lorastory captioner: BLIP, BLIP-2,
Florence-2, Qwen2.5-VL, a WD14 tagger or ``toy``; Data-Juicer's default is
BLIP-2 OPT-2.7B); ``caption_num`` candidates are sampled per picture and
``keep_candidate_mode`` keeps one at random (``random_any``), the one closest
to the original text by SimHash (``similar_one_simhash``), or all of them, one
new row each (``all``); ``keep_original_sample`` keeps the original row before
the new ones; ``prompt`` (or a row's ``prompt_key`` field, which wins) guides
the model. Each text chunk (split at ``<|__dj__eoc|>``) keeps only its special
tokens, with each picture's caption inserted after its ``<__dj__image>`` token.

One difference: a text with no image token at all (a plain caption, as
``lorastory data import`` writes) becomes the captions of all the row's
pictures, space-separated; Data-Juicer would write an empty text for it.
Candidates are sampled with a seed taken from the row, so the local and the Ray
executor write the same rows.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from typing import Any, Literal

from pydantic import PositiveInt

from lorastory.captions import DJ_SPECIAL_TOKENS
from lorastory.data.ops.base import Mapper, OpParams, load_once, register_op
from lorastory.data.sample import Sample
from lorastory.errors import CaptionerError, DataError, RecipeError
from lorastory.models.captioners.base import GenerationOptions
from lorastory.models.captioners.loader import check_captioner
from lorastory.models.captioners.loader import load_captioner
from lorastory.models.clip import one_thread_in_workers, op_device

EOC_TOKEN = "<|__dj__eoc|>"
_WORDS = re.compile(r"\S+")


class ImageCaptioningParams(OpParams):
    hf_img2seq: str = "Salesforce/blip2-opt-2.7b"
    trust_remote_code: bool = False
    caption_num: PositiveInt = 1
    keep_candidate_mode: Literal["random_any", "similar_one_simhash", "all"] = "random_any"
    keep_original_sample: bool = True
    prompt: str | None = None
    prompt_key: str | None = None
    gpu_batch_size: PositiveInt = 8
    memory: str | None = None
    max_new_tokens: PositiveInt = 128  # Data-Juicer's fixed generation length


def simhash(text: str, window: int = 2) -> int:
    """64-bit SimHash of lower-cased word shingles (Data-Juicer's document_simhash settings, window 2)."""
    words = _WORDS.findall(text.lower())
    shingles = [" ".join(words[i : i + window]) for i in range(max(1, len(words) - window + 1))] if words else [""]
    votes = [0] * 64
    for shingle in shingles:
        value = int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "big")
        for bit in range(64):
            votes[bit] += 1 if value >> bit & 1 else -1
    return sum(1 << bit for bit in range(64) if votes[bit] > 0)


def reduce_candidates(candidates: list[str], mode: str, original: str, rng: random.Random) -> list[str]:
    """The captions kept for one picture: one at random, the one nearest the original text, or all."""
    if mode == "all":
        return list(candidates)
    if mode == "random_any":
        return [rng.choice(candidates)]
    target = simhash(original)
    return [min(candidates, key=lambda text: bin(simhash(text) ^ target).count("1"))]


def insert_after_tokens(specials: str, token: str, texts: list[str]) -> str:
    """Data-Juicer's insert_texts_after_placeholders: each text after the next ``token``, spaces around it."""
    out, position = specials, 0
    for text in texts:
        index = out.find(token, position)
        out = f"{out[: index + len(token)]} {text} {out[index + len(token):]}"
        position = index + len(token) + len(text) + 2
    return out


def row_seed(sample: Sample, text_key: str, image_key: str | None) -> int:
    """A seed from the row's text and pictures: the same row samples the same captions in any process."""
    key = repr((sample.row.get(text_key), sample.row.get(image_key or sample.keys.image_key)))
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


@register_op("image_captioning_mapper")
class ImageCaptioningMapper(Mapper):
    """Captions each row's pictures into new rows (Data-Juicer's semantics; see the module docstring)."""

    Params = ImageCaptioningParams

    def __init__(self, params: ImageCaptioningParams) -> None:
        super().__init__(params)

        try:
            check_captioner(params.hf_img2seq)
        except CaptionerError as err:
            raise RecipeError(f"{self.name}: {err}") from None
        self._captioner: Any = None

    def _model(self) -> Any:
        def load() -> Any:

            one_thread_in_workers()
            return load_captioner(self.params.hf_img2seq, op_device(self.params.accelerator))

        return load_once(self, "_captioner", load)

    def _prompt(self, sample: Sample) -> str | None:
        p = self.params
        if p.prompt_key and isinstance(sample.row.get(p.prompt_key), str):
            return sample.row[p.prompt_key]
        return p.prompt

    def _candidates(self, sample: Sample, paths: list[str], seed: int) -> list[list[str]]:
        import torch


        p = self.params
        options = GenerationOptions(num=p.caption_num, sample=True, max_new_tokens=p.max_new_tokens)
        images = [sample.image_rgb(path) for path in paths]
        prompt, captioner, found = self._prompt(sample), self._model(), []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % (1 << 63))
            for start in range(0, len(images), p.gpu_batch_size):
                batch = images[start : start + p.gpu_batch_size]
                found += captioner.generate(batch, [prompt] * len(batch), options)
        return found

    def process(self, sample: Sample) -> list[dict[str, Any]]:
        p = self.params
        paths = sample.image_paths(p.image_key)
        kept = [sample.row] if p.keep_original_sample else []
        if not paths:
            return kept
        text = sample.text(p.text_key)
        token = sample.keys.image_special_token
        if text.count(token) > len(paths):
            raise DataError(f"the text has {text.count(token)} image tokens but the row has {len(paths)} pictures")
        seed = row_seed(sample, p.text_key or sample.keys.text_key, p.image_key)
        candidates = self._candidates(sample, paths, seed)
        rng = random.Random(seed)
        n_new = p.caption_num if p.keep_candidate_mode == "all" else 1
        texts = _new_texts(text, token, candidates, p.keep_candidate_mode, rng, n_new)
        new_rows = []
        for new_text in texts:
            row = copy.deepcopy(sample.row)
            row[p.text_key or sample.keys.text_key] = new_text
            new_rows.append(row)
        return kept + new_rows


def _new_texts(text: str, token: str, candidates: list[list[str]], mode: str, rng: random.Random, n_new: int) -> list[str]:
    """The ``n_new`` generated texts of a row, chunk by chunk as Data-Juicer assembles them."""
    if token not in text:
        original = DJ_SPECIAL_TOKENS.sub("", text).strip()
        kept = [reduce_candidates(c, mode, original, rng) for c in candidates]
        return [" ".join(per_image[i] for per_image in kept) for i in range(n_new)]
    outs, offset = [""] * n_new, 0
    for chunk in text.split(EOC_TOKEN):
        if not chunk.strip():
            continue
        count = chunk.count(token)
        specials = "".join(DJ_SPECIAL_TOKENS.findall(chunk))
        original = DJ_SPECIAL_TOKENS.sub("", chunk).strip()
        kept = [reduce_candidates(candidates[offset + j], mode, original, rng) for j in range(count)]
        for i in range(n_new):
            outs[i] += insert_after_tokens(specials, token, [per_image[i] for per_image in kept]) + EOC_TOKEN
        offset += count
    return outs
