"""Generation parameters stored in PNG files, readable by other tools.

Each panel carries two text chunks:

* ``parameters``: the AUTOMATIC1111 "infotext" that A1111, Forge, ComfyUI's
  drag-and-drop import and civitai read::

      二次元，紫色长发的少女 <lora:my_style:0.8>
      Negative prompt: 丑陋、变形
      Steps: 50, Sampler: Euler, CFG scale: 4, Seed: 1, Size: 1024x1024, Model: Kolors-diffusers, Lora hashes: "my_style: 1a2b3c4d5e6f"

  The LoRA is written the way A1111 does: a ``<lora:name:scale>`` tag at the
  end of the prompt (what A1111 and ComfyUI re-apply) and ``Lora hashes``
  (what civitai links to the model page). Values with a comma, colon, newline
  or quote are JSON-quoted (``key: "a, b"``), as A1111 quotes them.
* ``lorastory``: the exact parameters as JSON, so nothing is lost to the
  infotext's limits (it strips spaces at the ends of each line, for one).

Strings that fit Latin-1 go in ``tEXt`` chunks, others (Chinese) in UTF-8
``iTXt`` chunks, exactly as A1111 stores them; ``Image.open(p).text`` reads both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from lorastory.errors import BadImageError, DataError, first_line
from lorastory.fileio import atomic_open, display_path, file_sha256
from lorastory.images import open_image

PARAMETERS_KEY = "parameters"
JSON_KEY = "lorastory"
JSON_VERSION = 1

# A1111's own pattern for one "Key: value" pair of the last line (modules/infotext_utils.py).
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]+")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_LORA_TAG_RE = re.compile(r"\s*<lora:([^:<>\n]+):([^:<>\n]+)>\s*$")
_NEGATIVE_PREFIX = "Negative prompt:"

# The infotext keys we write, and the field each one comes from.
_KEY_FIELDS = {
    "Steps": "steps",
    "Sampler": "sampler",
    "CFG scale": "cfg_scale",
    "Seed": "seed",
    "Size": "width",
    "Model hash": "model_hash",
    "Model": "model",
    "Lora hashes": "lora_hash",
}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
# zlib level of the pictures a run writes (panels, reference, storyboard). 1 writes a 1024x1024 picture about
# 2.5x faster than Pillow's default 6 (0.13 vs 0.35 s here; an 8-panel storyboard 1.5 vs 4.0 s), about 15%
# larger; a noisy picture (random weights) takes as long at either level.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class GenerationParams:
    """What produced one image: enough to make it again."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_hash: str | None = None
    lora_name: str | None = None
    lora_scale: float | None = None
    lora_hash: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DataError(f"unknown generation parameter(s) {', '.join(unknown)}; expected some of {sorted(names)}")
        try:
            params = cls(**data)
        except TypeError as err:
            raise DataError(f"incomplete generation parameters ({err})") from None
        _check_types(params)
        return params


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "steps": (int,),
    "sampler": (str,),
    "cfg_scale": (int, float),
    "seed": (int,),
    "width": (int,),
    "height": (int,),
    "model": (str,),
    "model_hash": (str,),
    "lora_name": (str,),
    "lora_scale": (int, float),
    "lora_hash": (str,),
}


def _check_types(params: GenerationParams) -> None:
    for name, types in _FIELD_TYPES.items():
        value = getattr(params, name)
        if value is None and name not in ("prompt", "negative_prompt"):
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise DataError(f"generation parameter {name} must be {types[0].__name__}, got {value!r}")
    if not isinstance(params.extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.extra.items()
    ):
        raise DataError(f"generation parameter extra must map strings to strings, got {params.extra!r}")


# --------------------------------------------------------------------------- formatting


def _number(value: float) -> str:
    """4.0 -> '4', 7.5 -> '7.5': the shortest text that reads back as the same float."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _quote(value: str) -> str:
    """A1111's quoting, plus values that would otherwise lose spaces or quotes when read back."""
    if any(ch in value for ch in ",:\n") or value.startswith('"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def _check_lora_name(name: str) -> None:
    if not name or any(ch in name for ch in ":<>,\n"):
        raise DataError(
            f"LoRA name {name!r} cannot be written in a <lora:name:scale> tag; use a name without : < > , or newlines"
        )


def _param_pairs(params: GenerationParams) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if params.steps is not None:
        pairs.append(("Steps", str(params.steps)))
    if params.sampler is not None:
        pairs.append(("Sampler", params.sampler))
    if params.cfg_scale is not None:
        pairs.append(("CFG scale", _number(params.cfg_scale)))
    if params.seed is not None:
        pairs.append(("Seed", str(params.seed)))
    if (params.width is None) != (params.height is None):
        raise DataError("give both width and height, or neither")
    if params.width is not None:
        pairs.append(("Size", f"{params.width}x{params.height}"))
    if params.model_hash is not None:
        pairs.append(("Model hash", params.model_hash))
    if params.model is not None:
        pairs.append(("Model", params.model))
    if params.lora_hash is not None:
        if params.lora_name is None:
            raise DataError("lora_hash is set without lora_name; give the LoRA's name too")
        pairs.append(("Lora hashes", f"{params.lora_name}: {params.lora_hash}"))
    for key, value in params.extra.items():
        if key in _KEY_FIELDS and getattr(params, _KEY_FIELDS[key]) is not None:
            raise DataError(f"extra key {key!r} duplicates the field {_KEY_FIELDS[key]}; set only one of them")
        if not _KEY_RE.fullmatch(key) or key != key.strip():
            raise DataError(
                f"extra key {key!r} cannot be written; use 2+ letters, digits, spaces, '-', '/' or '_', not at the ends"
            )
        pairs.append((key, value))
    return pairs


def misread_warnings(params: GenerationParams) -> list[str]:
    """Why A1111-style parsers would read ``params``' infotext differently from what it holds (empty: they won't)."""
    found = []
    if any(line.strip().startswith(_NEGATIVE_PREFIX) for line in params.prompt.split("\n")):
        found.append(f"a prompt line starts with '{_NEGATIVE_PREFIX}'; A1111-style readers of the PNG will take the "
                     "rest as the negative prompt (the exact prompt is in the lorastory JSON chunk)")
    if any(line.strip().startswith(_NEGATIVE_PREFIX) for line in params.negative_prompt.split("\n")[1:]):
        found.append(f"a negative-prompt line starts with '{_NEGATIVE_PREFIX}'; A1111-style readers drop that word "
                     "(the exact negative prompt is in the lorastory JSON chunk)")
    return found


def format_parameters(params: GenerationParams) -> str:
    """The A1111 infotext for ``params``: prompt, ``Negative prompt:`` line, ``Key: value`` line.

    Text that parsers would mis-read is kept as it is and warned about (once per kind; see
    :func:`misread_warnings`): the exact values stay in the JSON chunk.
    """
    _check_types(params)
    for message in misread_warnings(params):
        warnings.warn(message, UserWarning, stacklevel=2)
    prompt = params.prompt
    if params.lora_name is not None:
        _check_lora_name(params.lora_name)
        scale = _number(params.lora_scale if params.lora_scale is not None else 1.0)
        prompt = f"{prompt} <lora:{params.lora_name}:{scale}>" if prompt else f"<lora:{params.lora_name}:{scale}>"
    lines = [prompt]
    if params.negative_prompt:
        lines.append(f"{_NEGATIVE_PREFIX} {params.negative_prompt}")
    pairs = _param_pairs(params)
    if pairs:
        lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs))
    return "\n".join(lines).strip()


# --------------------------------------------------------------------------- parsing


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def _is_param_line(line: str) -> bool:
    """A1111's test (3+ pairs), or a line made only of pairs that include a key we write."""
    pairs = _PARAM_RE.findall(line)
    if len(pairs) >= 3:
        return True
    if not pairs or "".join(m.group(0) for m in _PARAM_RE.finditer(line)).strip() != line.strip():
        return False
    return any(key in _KEY_FIELDS for key, _ in pairs)


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(_NEGATIVE_PREFIX) :].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative)


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _parse_known(key: str, value: str) -> dict[str, Any]:
    """The fields a known key sets; empty for an unknown key or an unreadable value."""
    if key in ("Steps", "Seed"):
        number = _int_or_none(value)
        return {} if number is None else {key.lower(): number}
    if key == "CFG scale":
        scale = _float_or_none(value)
        return {} if scale is None else {"cfg_scale": scale}
    if key == "Size":
        size = _SIZE_RE.match(value)
        return {"width": int(size.group(1)), "height": int(size.group(2))} if size else {}
    if key in ("Sampler", "Model", "Model hash"):
        return {key.lower().replace(" ", "_"): value}
    return {}  # "Lora hashes" is matched with the prompt's LoRA tag afterwards


def parse_parameters(text: str) -> GenerationParams:
    """Read an A1111 infotext (ours or another tool's); unrecognised keys land in ``extra``."""
    *lines, last = text.strip().split("\n")
    if _is_param_line(last):
        param_line = last
    else:
        lines.append(last)
        param_line = ""
    prompt, negative = _split_prompts(lines)

    fields: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(param_line):
        value = _unquote(raw)
        parsed = _parse_known(key, value)
        if parsed:
            fields.update(parsed)
        else:
            extra[key] = value

    tag = _LORA_TAG_RE.search(prompt)
    if tag and _float_or_none(tag.group(2)) is not None and not _LORA_TAG_RE.search(prompt[: tag.start()]):
        prompt = prompt[: tag.start()]
        fields["lora_name"], fields["lora_scale"] = tag.group(1), float(tag.group(2))
        hashes = extra.get("Lora hashes", "")
        name, sep, digest = hashes.partition(":")
        if sep and name.strip() == tag.group(1) and "," not in digest:
            fields["lora_hash"] = digest.strip()
            del extra["Lora hashes"]
    return GenerationParams(prompt=prompt, negative_prompt=negative, extra=extra, **fields)


# --------------------------------------------------------------------------- files


def lora_short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's short LoRA hash (civitai "AutoV3"): SHA-256 of a safetensors file's tensor data, 12 hex digits."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            header = handle.read(8)
            if len(header) < 8:
                raise DataError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            handle.seek(8 + int.from_bytes(header, "little"))
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"{path}: LoRA file not found; pass the path of a .safetensors file") from None
    return digest.hexdigest()[:12]


def model_name(model: str) -> str:
    """The ``Model:`` value: a local folder's name or file's stem, never its path; a hub id as given."""
    text = str(model).rstrip("/\\")
    local = Path(os.path.expanduser(text))
    if local.is_absolute() or local.exists() or text.startswith((".", "~")) or "\\" in text or text.count("/") != 1:
        return local.stem if local.suffix.lower() in (".safetensors", ".ckpt") else local.name or text
    return text  # "org/name" that is not a local path: a hub id, which names the model


def model_short_hash(model: str | os.PathLike[str]) -> str | None:
    """A1111's ``Model hash``: the first 10 hex digits of the SHA-256 of a single-file model; None for a folder or hub id."""
    path = Path(os.path.expanduser(str(model)))
    return file_sha256(path)[:10] if path.is_file() else None


def png_info(params: GenerationParams) -> PngImagePlugin.PngInfo:
    """The two text chunks (``parameters`` and ``lorastory``) for ``params``."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(params))
    payload = {"version": JSON_VERSION, "params": params.to_dict()}
    info.add_text(JSON_KEY, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    return info


def save_png_with_parameters(image: Image.Image, path: str | os.PathLike[str], params: GenerationParams) -> None:
    """Write ``image`` as a PNG carrying ``params`` (atomically: no half-written file on a crash)."""
    save_png_with_info(image, path, png_info(params))


def save_png_with_info(image: Image.Image, path: str | os.PathLike[str], info: PngImagePlugin.PngInfo) -> None:
    """Write ``image`` as a PNG carrying ``info``'s chunks (:func:`png_info`), atomically.

    Apart from :func:`save_png_with_parameters` so that a run formats the parameters (and warns) on
    its own thread and leaves only this CPU work to a writer thread.
    """
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)


def _from_json(text: str) -> GenerationParams | None:
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("version") != JSON_VERSION
        or not isinstance(payload.get("params"), dict)
    ):
        return None
    try:
        return GenerationParams.from_dict(payload["params"])
    except DataError:
        return None


def read_parameters(path: str | os.PathLike[str]) -> GenerationParams | None:
    """The parameters stored in a PNG: exact ones from ``lorastory``, else parsed from ``parameters``; ``None`` if neither.

    The file is checked as every image is (:func:`~lorastory.images.probe_image`: a regular
    file, not a FIFO or folder, a complete image within the pixel limit); a file that cannot be
    read, or whose text chunks cannot be decoded (a text-chunk bomb), is one :class:`DataError` naming it.
    """
    name = display_path(path)
    try:
        with open_image(path) as image:
            chunks = dict(getattr(image, "text", None) or {})
    except BadImageError as err:
        if "not found" in str(err):
            raise DataError(f"{name}: file not found; pass the path of a generated PNG") from None
        raise DataError(f"{name}: cannot read it as an image ({err})") from None
    except MemoryError:
        raise DataError(f"{name}: not enough memory to read its text chunks") from None
    except Exception as err:  # noqa: BLE001  any decoder failure (text-chunk bomb, AVIF...) names the file
        raise DataError(f"{name}: cannot read it as an image ({first_line(err, 200)})") from None
    exact = chunks.get(JSON_KEY)
    if isinstance(exact, str):
        params = _from_json(exact)
        if params is not None:
            return params
    text = chunks.get(PARAMETERS_KEY)
    if isinstance(text, str) and text.strip():
        try:
            return parse_parameters(text)
        except (DataError, ValueError, TypeError):
            return None  # another tool's text we cannot make sense of: no parameters
    return None
