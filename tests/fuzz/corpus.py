"""The fuzz corpus: deterministic bad inputs for every ``lorastory`` entry point (issue 15).

A :class:`Case` builds its inputs inside an empty case folder (``root``) and returns a
:class:`Spec`: the command line, the paths the command may write, what the exit code must
be where only one is right, and what the data stages must keep and report. The harness
(:mod:`harness`) runs it in-process and checks the promises every entry point makes:
exit 0 or 1, no traceback, no hang, nothing written outside the outputs, inputs intact,
every good row kept and every bad row reported.

Families follow the issue: ``decoder`` (1), ``text`` (2), ``foreign-stats`` (3),
``damaged-state`` (4), ``output`` (5), ``numbers`` (6), ``family`` (7), ``hang`` (8), plus
``data-loss``, ``code-run``, ``wrong-output`` and ``modes`` (images that are valid and must
be converted right).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import badfiles as bf

ENTRIES = ("data-import", "data-run", "data-export-csv", "train", "generate", "regenerate", "grid", "eval",
           "data-clip-score")
DATA_TIMEOUT = 20.0
MODEL_TIMEOUT = 60.0

Check = Callable[[Path, int, str], list[str]]
"""An extra check of what a run left: (case root, exit code, stdout+stderr) -> problems found."""


class Resources(Protocol):
    """Things model cases need, built once per session by the harness."""

    def model(self, family: str) -> Path: ...
    def clip(self) -> Path: ...
    def run(self) -> Path: ...          # a generated 2-panel story run (kolors tiny, 64 px)
    def trained(self) -> Path: ...      # a train run folder with checkpoints step 1 and 2 and a cache
    def train_data(self) -> Path: ...   # the training folder the trained run used
    def lora(self) -> Path: ...         # a kolors LoRA file


@dataclass
class Spec:
    """What to run and what must hold afterwards."""

    args: list[str]
    outputs: list[str] = field(default_factory=list)   # relative to root: may be created/changed (prefixes)
    protect: list[str] = field(default_factory=list)   # inside outputs, but must stay byte-identical
    volatile: list[str] = field(default_factory=list)  # outputs a failed run may still rewrite (its own settings)
    expect: str = "any"                                 # "any" (0 or 1), "ok" (0), "error" (1)
    stage: str | None = None                            # "import", "run", "export": check rows
    data_out: str = ""                                  # import/export: out folder; run: the export jsonl
    good: list[str] = field(default_factory=list)      # captions that must be in the output
    bad: list[str] = field(default_factory=list)       # markers that must be in the report's skipped rows
    either: list[tuple[str, str]] = field(default_factory=list)  # (caption, marker): kept or reported
    checks: list[Check] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    entry: str
    name: str
    family: str
    build: Callable[[Path, Resources], Spec]
    timeout: float = DATA_TIMEOUT
    model: bool = False

    @property
    def id(self) -> str:
        return f"{self.entry}/{self.name}"


# --- placing things --------------------------------------------------------------------------

FIFO, DIR, LOOP, DANGLING = "fifo", "dir", "loop", "dangling"
Thing = Union[bytes, str, "Link"]


@dataclass(frozen=True)
class Link:
    target: str


def place(path: Path | bytes, thing: Thing) -> None:
    """Create ``thing`` (bytes, a FIFO, a folder, a symlink loop, a link) at ``path``."""
    target = os.fsencode(path)
    os.makedirs(os.path.dirname(target) or b".", exist_ok=True)
    if isinstance(thing, bytes):
        with open(target, "wb") as handle:
            handle.write(thing)
    elif isinstance(thing, Link):
        os.symlink(thing.target, target)
    elif thing == FIFO:
        os.mkfifo(target)
    elif thing == DIR:
        os.mkdir(target)
        with open(os.path.join(target, b"inside.png"), "wb") as handle:
            handle.write(bf.good_png(99))
    elif thing == LOOP:
        other = target + b".loop"
        os.symlink(os.path.basename(other), target)
        os.symlink(os.path.basename(target), other)
    elif thing == DANGLING:
        os.symlink("does-not-exist.png", target)
    else:
        raise ValueError(thing)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unwritable_dir(root: Path) -> Path:
    """A folder the command cannot write into: under /proc (root ignores chmod), else a 0o555 folder."""
    if is_root():
        return Path("/proc/lorastory-fuzz-nowhere")
    folder = root / "readonly"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


# --- image families ------------------------------------------------------------------------------

# name -> (family, file name, thing): an image input no stage can use
BAD_IMAGES: dict[str, tuple[str, str, Thing]] = {
    "truncated-png": ("decoder", "trunc.png", bf.truncated_png()),
    "zero-byte-png": ("decoder", "empty.png", b""),
    "garbage-png": ("decoder", "garbage.png", bf.garbage()),
    "ztxt-bomb-png": ("decoder", "ztxt.png", bf.ztxt_bomb_png()),
    "iccp-bomb-png": ("decoder", "iccp.png", bf.iccp_bomb_png()),
    "avif-named-png": ("decoder", "phone.png", bf.avif_bytes()),  # decodable where Pillow has AVIF: see MAYBE_IMAGES
    "corrupt-avif-named-png": ("decoder", "broken.png", bf.corrupt_avif()),
    "bomb-png": ("decoder", "bomb.png", bf.bomb_png()),
    "bomb-gif": ("decoder", "bomb.gif", bf.bomb_gif()),
    "fifo-png": ("hang", "pipe.png", FIFO),
    "directory-png": ("decoder", "folder.png", DIR),
    "symlink-loop-png": ("decoder", "loop.png", LOOP),
    "dangling-symlink-png": ("decoder", "dangling.png", DANGLING),
}
# images every stage must take, converted right (name -> (file name, bytes))
TRICKY_IMAGES: dict[str, tuple[str, bytes]] = {
    "cmyk-jpeg": ("cmyk.jpg", bf.cmyk_jpeg()),
    "cmyk-tiff": ("cmyk-tiff.tif", bf.cmyk_tiff()),
    "png-16bit": ("deep.png", bf.png16()),
    "float32-tiff": ("float32.tif", bf.float32_tiff()),
    "int32-tiff": ("int.tif", bf.int32_tiff()),
    "palette-alpha-png": ("palette.png", bf.palette_alpha_png()),
    "la-png": ("la.png", bf.la_png()),
    "one-bit-png": ("bits.png", bf.one_bit_png()),
    "exif-rotated-jpeg": ("rotated.jpg", bf.exif_rotated_jpeg()),
    "animated-gif": ("anim.gif", bf.animated_gif()),
}

DEEP_ARRAY = ("[" * 200_000 + "]" * 200_000).encode()

# name -> (family, line bytes, extra files relative to the dataset folder); {img} = a good image path
BAD_ROWS: dict[str, tuple[str, bytes, dict[str, Thing]]] = {
    "row-array": ("text", b'["a caption", ["images/extra.png"]]', {}),
    "row-number": ("text", b"42", {}),
    "row-null": ("text", b"null", {}),
    "row-string": ("text", b'"just a string"', {}),
    "row-deep-array-200k": ("text", DEEP_ARRAY, {}),
    "row-deep-object": ("text", b'{"text": "x", "a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, {}),
    "row-invalid-json": ("text", b'{"text": "unterminated', {}),
    "row-not-utf8": ("text", b'{"text": "caf\xe9", "images": ["images/extra.png"]}', {}),
    "row-lone-surrogate-text": ("text", b'{"text": "bad \\ud800 caption", "images": ["images/extra.png"]}', {}),
    "row-images-number": ("text", b'{"text": "images is a number", "images": 5}', {}),
    "row-images-list-of-numbers": ("text", b'{"text": "numbers", "images": [1, 2]}', {}),
    "row-images-dict": ("text", b'{"text": "dict", "images": {"a": "b"}}', {}),
    "row-text-number": ("text", b'{"text": 12345, "images": ["images/extra.png"]}', {}),
    "row-text-missing": ("text", b'{"images": ["images/extra.png"]}', {}),
    "row-nul-in-path": ("text", b'{"text": "nul path", "images": ["images/a\\u0000.png"]}', {}),
    "row-empty-path": ("text", b'{"text": "empty path", "images": [""]}', {}),
    "row-dot-path": ("text", b'{"text": "dot path", "images": ["."]}', {}),
    "row-path-etc-passwd": ("text", b'{"text": "not an image", "images": ["/etc/passwd"]}', {}),
    "row-path-dev-zero": ("hang", b'{"text": "device", "images": ["/dev/zero"]}', {}),
}
for _name, (_family, _file, _thing) in BAD_IMAGES.items():
    BAD_ROWS[f"image-{_name}"] = (_family, b'{"text": "bad image %s", "images": ["images/%s"]}'
                                  % (_name.encode(), _file.encode()), {f"images/{_file}": _thing})
# A latin-1 file name (undecodable bytes): JSON can only name it through the surrogate escape.
BAD_ROWS["image-latin1-name"] = ("text", b'{"text": "bad image latin1-name", "images": ["images/caf\\udce9.png"]}',
                                 {"images/caf\udce9.png": bf.good_png(30)})
# The extra image some malformed rows name: it exists, so only the row's shape is wrong.
_EXTRA = {"images/extra.png": bf.good_png(50)}

GOOD_COUNT = 3
# Inputs a stage may either take (where Pillow decodes them) or report; never drop silently.
MAYBE_IMAGES = {"avif-named-png", "latin1-name"}



def maybe_caption(row: str) -> str | None:
    """The caption of a row whose image a stage may take or report (see MAYBE_IMAGES)."""
    name = row.removeprefix("image-")
    return f"bad image {name}" if name in MAYBE_IMAGES else None


def _bad_markers(numbers: list[int], maybe: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    if maybe is None:
        return _line_markers(numbers), []
    return [], [(maybe, m) for m in _line_markers(numbers)]


def good_caption(k: int) -> str:
    return f"good sample number {k} 好的"


def _good_images(folder: Path) -> list[str]:
    rels = []
    for k in range(GOOD_COUNT):
        rel = f"images/good_{k}.png"
        place(folder / rel, bf.good_png(k))
        rels.append(rel)
    return rels


def _jsonl_dataset(folder: Path, bad: list[bytes], files: dict[str, Thing], name: str = "data.jsonl",
                   good_first: bool = True) -> tuple[Path, list[int]]:
    """GOOD_COUNT good rows and the bad lines (bad lines in the middle); return file and bad line numbers."""
    rels = _good_images(folder)
    for rel, thing in {**_EXTRA, **files}.items():
        if not os.path.lexists(folder / rel):
            place(folder / rel, thing)
    good = [json.dumps({"text": good_caption(k), "images": [rel]}, ensure_ascii=False).encode() for k, rel in enumerate(rels)]
    lines = good[:2] + bad + good[2:] if good_first else bad + good
    numbers = [lines.index(b) + 1 for b in bad]
    path = folder / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, numbers


def _line_markers(numbers: list[int]) -> list[str]:
    return [f"line {n}" for n in numbers]


# --- checks -----------------------------------------------------------------------------------


def _load_rgb_stats(path: Path) -> tuple[tuple[int, int], float]:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return (rgb.shape[1], rgb.shape[0]), float(rgb.std())


def exported_images_not_blank(out: str) -> Check:
    """Every image an export wrote has content (a float TIFF clipped to black would not)."""

    def check(root: Path, code: int, _text: str) -> list[str]:
        if code != 0:
            return []
        problems = []
        for file in sorted((root / out / "images").glob("*")):
            try:
                _size, spread = _load_rgb_stats(file)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{file.name}: exported image unreadable ({type(err).__name__})")
                continue
            if spread < 1.0:
                problems.append(f"{file.name}: exported image is a single colour (lost its content)")
        return problems

    return check


def exported_portrait(out: str) -> Check:
    def check(root: Path, code: int, _text: str) -> list[str]:
        if code != 0:
            return []
        sizes = [_load_rgb_stats(f)[0] for f in sorted((root / out / "images").glob("*"))]
        return [] if (40, 64) in sizes else [f"EXIF-rotated image not exported upright as 40x64 (sizes {sizes})"]

    return check


def absent_text(path: str, needle: str, why: str) -> Check:
    def check(root: Path, _code: int, _text: str) -> list[str]:
        file = root / path
        if file.is_file() and needle.encode() in file.read_bytes():
            return [f"{path}: {why}"]
        return []

    return check


def missing(path: str, why: str) -> Check:
    def check(root: Path, _code: int, _text: str) -> list[str]:
        return [f"{path}: {why}"] if os.path.lexists(root / path) else []

    return check


def refused_or_warned(*words: str) -> Check:
    """Exit 1, or exit 0 with a warning naming one of ``words`` (a legal value that empties or changes every row)."""

    def check(_root: Path, code: int, text: str) -> list[str]:
        lowered = text.lower()
        if code == 1 or ("warning" in lowered and any(w in lowered for w in words)):
            return []
        return [f"exit 0 without a warning mentioning {' or '.join(words)}"]

    return check


def strict_json(path: str) -> Check:
    """A JSON file the command wrote is standard JSON (no NaN/Infinity)."""

    def check(root: Path, code: int, _text: str) -> list[str]:
        file = root / path
        if code != 0 or not file.is_file():
            return []

        def refuse(constant: str) -> Any:
            raise ValueError(constant)

        try:
            json.loads(file.read_text(encoding="utf-8"), parse_constant=refuse)
        except ValueError as err:
            return [f"{path}: not standard JSON ({err})"]
        return []

    return check


def panels_not_blank(run: str) -> Check:
    """Every panel a generate/regenerate wrote has content (NaN latents decode to one colour)."""

    def check(root: Path, code: int, _text: str) -> list[str]:
        if code != 0:
            return []
        problems = []
        for file in sorted((root / run).glob("panel-*.png")):
            if _load_rgb_stats(file)[1] < 1.0:
                problems.append(f"{run}/{file.name}: panel is a single colour (NaN/inf in the render?)")
        return problems

    return check


def panels_match_manifest(run: str) -> Check:
    """No stale panel of an earlier, longer run survives beside a new manifest."""

    def check(root: Path, code: int, _text: str) -> list[str]:
        manifest = root / run / "manifest.json"
        if code != 0 or not manifest.is_file():
            return []
        listed = {p["file"] for p in json.loads(manifest.read_text(encoding="utf-8"))["panels"]}
        stale = sorted(p.name for p in (root / run).glob("panel-*.png") if p.name not in listed)
        return [f"{run}: stale panels not in the manifest: {stale}"] if stale else []

    return check


def lora_finite(path: str) -> Check:
    def check(root: Path, code: int, _text: str) -> list[str]:
        file = root / path
        if code != 0 or not file.is_file():
            return []
        import torch
        from safetensors.torch import load_file

        bad = [k for k, v in load_file(str(file)).items() if not torch.isfinite(v).all()]
        return [f"{path}: non-finite weights in {bad[:3]}"] if bad else []

    return check


def one_line_mention(*words: str) -> Check:
    """An error exit names one of ``words`` (the file or value at fault)."""

    def check(_root: Path, code: int, text: str) -> list[str]:
        if code != 1 or any(w.lower() in text.lower() for w in words):
            return []
        return [f"the error does not name {' or '.join(words)}"]

    return check


# --- data import ------------------------------------------------------------------------------


def _import_folder(bad: dict[str, Thing], captions: dict[str, bytes] | None = None, good_extra: dict[str, bytes] | None = None,
                   markers: list[str] | None = None, either: list[tuple[str, str]] | None = None,
                   checks: list[Check] | None = None, expect: str = "ok") -> Callable[[Path, Resources], Spec]:
    """A folder of GOOD_COUNT captioned images plus ``bad`` things (each with a caption) and ``good_extra`` images."""

    def build(root: Path, _res: Resources) -> Spec:
        src = root / "src"
        good = []
        for k in range(GOOD_COUNT):
            place(src / f"good_{k}.png", bf.good_png(k))
            write(src / f"good_{k}.txt", good_caption(k))
            good.append(good_caption(k))
        given = {os.fsencode(n) for n in [*bad, *(captions or {})] if os.fsencode(n).endswith(b".txt")}
        for name, thing in bad.items():
            raw = os.fsencode(name)
            place(os.fsencode(src) + b"/" + raw, thing)
            caption = raw.rsplit(b".", 1)[0] + b".txt"
            if not raw.endswith(b".txt") and caption not in given:
                with open(os.fsencode(src) + b"/" + caption, "wb") as handle:
                    handle.write(b"caption of a bad file")
        for name, data in (captions or {}).items():
            write(src / name, data)
        for index, (name, data) in enumerate((good_extra or {}).items()):
            place(src / name, data)
            caption = f"tricky good {index} {name}"
            write(src / (name.rsplit(".", 1)[0] + ".txt"), caption)
            good.append(caption)
        return Spec(["data", "import", str(src), "--out", str(root / "out")], outputs=["out"], expect=expect,
                    stage="import", data_out="out", good=good,
                    bad=markers if markers is not None else [n if isinstance(n, str) else os.fsdecode(n) for n in bad],
                    either=either or [], checks=checks or [])

    return build


def _import_jsonl(row: str) -> Callable[[Path, Resources], Spec]:
    family, line, files = BAD_ROWS[row]

    def build(root: Path, _res: Resources) -> Spec:
        src = root / "src"
        _path, numbers = _jsonl_dataset(src, [line], files, name="metadata.jsonl")
        bad, either = _bad_markers(numbers, maybe_caption(row))
        return Spec(["data", "import", str(src), "--out", str(root / "out")], outputs=["out"], expect="ok",
                    stage="import", data_out="out", good=[good_caption(k) for k in range(GOOD_COUNT)],
                    bad=bad, either=either)

    return build


def _import_csv(rows: bytes, bad_lines: list[int], expect: str = "ok", either: list[tuple[str, str]] | None = None,
                header: bytes = b"file_name,text\n", checks: list[Check] | None = None,
                good_after: bool = False) -> Callable[[Path, Resources], Spec]:
    """metadata.csv: header, two good rows, ``rows``, a third good row."""

    def build(root: Path, _res: Resources) -> Spec:
        src = root / "src"
        rels = _good_images(src)
        body = header + b"".join(f"{rel},{good_caption(k)}\n".encode() for k, rel in enumerate(rels[:2]))
        body += rows + f"{rels[2]},{good_caption(2)}\n".encode()
        write(src / "metadata.csv", body)
        good = [good_caption(k) for k in range(2)]
        extra = list(either or [])
        if good_after:
            extra.append((good_caption(2), "line %d" % (4 + rows.count(b"\n"))))
        else:
            good.append(good_caption(2))
        return Spec(["data", "import", str(src), "--out", str(root / "out")], outputs=["out"], expect=expect,
                    stage="import", data_out="out", good=good, bad=[f"line {n}" for n in bad_lines], either=extra,
                    checks=checks or [])

    return build


def _import_out(kind: str) -> Callable[[Path, Resources], Spec]:
    """--out that is, contains, lies inside, links to the source, or cannot be written."""

    def build(root: Path, _res: Resources) -> Spec:
        src = root / "data" / "src"
        for k in range(GOOD_COUNT):
            place(src / f"good_{k}.png", bf.good_png(k))
            write(src / f"good_{k}.txt", good_caption(k))
        write(root / "data" / "notes.txt", "the user's notes beside the source")
        args = ["data", "import", str(src), "--overwrite", "--out"]
        if kind == "same":
            return Spec(args + [str(src)], expect="error", checks=[one_line_mention("src")])
        if kind == "parent":
            return Spec(args + [str(root / "data")], expect="error")
        if kind == "inside":
            return Spec(args + [str(src / "dataset")], expect="error")
        if kind == "symlink":
            os.symlink(src, root / "link")
            return Spec(args + [str(root / "link")], expect="error")
        if kind == "existing-file":
            return Spec(args + [str(root / "data" / "notes.txt")], expect="error", checks=[one_line_mention("notes.txt")])
        if kind == "unwritable":
            return Spec(args + [str(unwritable_dir(root) / "out")], expect="error")
        raise ValueError(kind)

    return build


def _import_stale_temp(root: Path, _res: Resources) -> Spec:
    """A killed earlier import left a hidden temp folder (dead PID) beside --out; the next run cleans it."""
    spec = _import_folder({})(root, _res)
    stale = root / ".out.999999.deadbeef.tmp"
    place(stale / "images" / "000000-good_0.png", bf.good_png(0))
    spec.outputs.append(stale.name)
    spec.checks.append(missing(stale.name, "temp folder of a killed import left behind"))
    return spec


def _import_source_is(kind: str) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        target = root / "src.jsonl"
        place(target, FIFO if kind == "fifo" else b"")
        if kind == "metadata-fifo":
            target = root / "src"
            _good_images(target)
            place(target / "metadata.jsonl", FIFO)
        return Spec(["data", "import", str(target), "--out", str(root / "out")], outputs=["out"])

    return build


def _import_cases() -> list[Case]:
    cases = []
    for name, (family, file, thing) in BAD_IMAGES.items():
        either = [("caption of a bad file", file)] if name in MAYBE_IMAGES else None
        cases.append(Case("data-import", f"folder-{name}", family,
                          _import_folder({file: thing}, markers=[] if either else None, either=either)))
    cases += [
        Case("data-import", "folder-corrupt-avif-file", "decoder", _import_folder({"broken.avif": bf.corrupt_avif()})),
        Case("data-import", "folder-valid-avif-listed-or-kept", "wrong-output",
             _import_folder({"x.avif": bf.avif_bytes()}, markers=[], either=[("caption of a bad file", "x.avif")])),
        Case("data-import", "folder-non-image-listed", "wrong-output", _import_folder({"notes.pdf": b"%PDF-1.4 not an image"})),
        Case("data-import", "folder-latin1-file-name", "text",
             _import_folder({b"caf\xe9.png": bf.good_png(20)}, markers=[], either=[("caption of a bad file", "caf")])),
        Case("data-import", "folder-latin1-caption", "text",
             _import_folder({"latin.png": bf.good_png(21)}, captions={"latin.txt": b"caf\xe9 au lait"}, markers=["latin.png"])),
        Case("data-import", "folder-surrogate-caption-cesu", "text",
             _import_folder({"cesu.png": bf.good_png(22)}, captions={"cesu.txt": b"bad \xed\xa0\x80 caption"}, markers=["cesu.png"])),
        Case("data-import", "folder-empty-caption", "text",
             _import_folder({"blank.png": bf.good_png(23)}, captions={"blank.txt": b"   \n"}, markers=["blank.png"])),
        Case("data-import", "folder-caption-is-a-fifo", "hang",
             _import_folder({"piped.png": bf.good_png(24), "piped.txt": FIFO}, markers=["piped.png"])),
        Case("data-import", "folder-caption-symlink-etc-passwd", "data-loss",
             _import_folder({"secret.png": bf.good_png(25), "secret.txt": Link("/etc/passwd")}, markers=["secret.png"],
                            checks=[absent_text("out/metadata.jsonl", "root:", "a caption symlinked to /etc/passwd was read")])),
        Case("data-import", "folder-tricky-modes-kept", "modes",
             _import_folder({}, good_extra={file: data for file, data in TRICKY_IMAGES.values()})),
    ]
    for row in BAD_ROWS:
        cases.append(Case("data-import", f"jsonl-{row}", BAD_ROWS[row][0], _import_jsonl(row)))
    big = "x" * 150_000
    cases += [
        Case("data-import", "csv-150kb-field", "text",
             _import_csv(f"images/good_0.png,{big}\n".encode(), [], either=[(big, "line 4")])),
        Case("data-import", "csv-unterminated-quote", "wrong-output",
             _import_csv(b'images/good_1.png,"never closed\n', [4], expect="any", good_after=True)),
        Case("data-import", "csv-duplicate-column", "wrong-output",
             _import_csv(b"", [], expect="any", header=b"file_name,text,text\n",
                         checks=[refused_or_warned("duplicate", "column")])),
        Case("data-import", "csv-not-utf8", "text", _import_csv(b"images/good_0.png,caf\xe9\n", [4], expect="any")),
        Case("data-import", "csv-empty-file-name", "text", _import_csv(b",empty file name\n", [4])),
        Case("data-import", "csv-dot-file-name", "text", _import_csv(b".,dot file name\n", [4])),
        Case("data-import", "csv-nul-in-file-name", "text", _import_csv(b"images/a\x00b.png,nul in name\n", [4], expect="any")),
        Case("data-import", "csv-fifo-file-name", "hang", lambda root, res: (place(root / "src" / "images" / "p.png", FIFO),
                                                                            _import_csv(b"images/p.png,fifo row\n", [4])(root, res))[1]),
        Case("data-import", "csv-short-row", "text", _import_csv(b"images/good_0.png\n", [4], expect="any")),
        Case("data-import", "source-is-fifo", "hang", _import_source_is("fifo")),
        Case("data-import", "source-metadata-jsonl-is-fifo", "hang", _import_source_is("metadata-fifo")),
        Case("data-import", "stale-temp-of-killed-import", "data-loss", _import_stale_temp),
    ]
    for kind in ("same", "parent", "inside", "symlink", "existing-file", "unwritable"):
        cases.append(Case("data-import", f"out-{kind}", "data-loss" if kind in ("same", "parent", "inside", "symlink") else "output",
                          _import_out(kind)))
    return cases


# --- data run --------------------------------------------------------------------------------

_SHAPE_OP = [{"image_shape_filter": {"min_width": 1, "min_height": 1}}]


def _recipe(root: Path, dataset: Path, export: Path, process: Any = None, np: int = 1, extra: str = "") -> Path:
    ops = json.dumps(_SHAPE_OP if process is None else process, ensure_ascii=False)
    return write(root / "recipe.yaml", f"dataset_path: {json.dumps(str(dataset))}\nexport_path: {json.dumps(str(export))}\n"
                                       f"np: {np}\nprocess: {ops}\n{extra}")


def _run_rows(bad: list[bytes], files: dict[str, Thing], np: int = 1, process: Any = None,
              expect: str = "ok", checks: list[Check] | None = None, maybe: str | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        dataset, numbers = _jsonl_dataset(root / "data", bad, files)
        recipe = _recipe(root, dataset, root / "out" / "result.jsonl", process=process, np=np)
        markers, either = _bad_markers(numbers, maybe)
        return Spec(["data", "run", str(recipe), "-q"], outputs=["out"], expect=expect, stage="run",
                    data_out="out/result.jsonl", good=[good_caption(k) for k in range(GOOD_COUNT)],
                    bad=markers, either=either, checks=checks or [])

    return build


# Stats another tool wrote are a cache: unusable ones may be recomputed (the row kept) or the row reported.
_RECOMPUTED = "row with foreign stats"


def _stats_row(stats: str, caption: str = "row with foreign stats") -> bytes:
    return ('{"text": "%s", "images": ["images/extra.png"], "__dj__stats__": %s}' % (caption, stats)).encode()


def _run_recipe_text(text: str | bytes, expect: str = "error", checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    """A recipe file given as text ({data} and {out} filled in)."""

    def build(root: Path, _res: Resources) -> Spec:
        dataset, _ = _jsonl_dataset(root / "data", [], {})
        raw = text if isinstance(text, bytes) else text.format(data=json.dumps(str(dataset)),
                                                               out=json.dumps(str(root / "out" / "result.jsonl")))
        recipe = write(root / "recipe.yaml", raw)
        return Spec(["data", "run", str(recipe), "-q"], outputs=["out"], expect=expect, checks=checks or [])

    return build


_BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))
_DEEP_YAML = "deep: " + "[" * 50_000 + "]" * 50_000 + "\n"


def _run_params(op: str, params: dict[str, Any] | str, expect: str = "any", checks: list[Check] | None = None,
                stage: bool = True) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        dataset, _ = _jsonl_dataset(root / "data", [], {})
        body = params if isinstance(params, str) else json.dumps(params)
        recipe = write(root / "recipe.yaml", f"dataset_path: {json.dumps(str(dataset))}\n"
                                             f"export_path: {json.dumps(str(root / 'out' / 'result.jsonl'))}\n"
                                             f"np: 1\nprocess:\n  - {op}: {body}\n")
        return Spec(["data", "run", str(recipe), "-q"], outputs=["out"], expect=expect, checks=checks or [])

    return build


def _remote_code_clip(root: Path) -> Path:
    """A model folder whose config asks for its own Python code, which writes a marker file if run."""
    folder = root / "evil-clip"
    marker = root / "CODE_RAN"
    write(folder / "config.json", json.dumps({"model_type": "evil", "architectures": ["EvilModel"],
                                              "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    write(folder / "evil.py", f"open({str(marker)!r}, 'w').write('ran')\n"
                              "from transformers import PretrainedConfig, PreTrainedModel\n"
                              "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
                              "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n")
    return folder


def _pickle_only_clip(root: Path, res: Resources) -> Path:
    """A CLIP folder with weights only as pytorch_model.bin (a pickle) and its configs."""
    folder = root / "pickle-clip"
    folder.mkdir()
    for file in res.clip().iterdir():
        if file.is_file() and file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)
    import torch
    from safetensors.torch import load_file

    weights = next(res.clip().glob("*.safetensors"))
    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    return folder


def _run_clip(kind: str) -> Callable[[Path, Resources], Spec]:
    """image_text_similarity_filter with a hostile or broken hf_clip; a previous result must survive a refusal."""

    def build(root: Path, res: Resources) -> Spec:
        dataset, _ = _jsonl_dataset(root / "data", [], {})
        extra_checks: list[Check] = []
        params: dict[str, Any] = {"min_score": -1.0, "max_score": 1.0}
        if kind == "trust-remote-code":
            params.update(hf_clip=str(_remote_code_clip(root)), trust_remote_code=True)
            extra_checks.append(missing("CODE_RAN", "the recipe's trust_remote_code ran the model folder's Python"))
        elif kind == "etc":
            params.update(hf_clip="/etc")
        elif kind == "pickle-only":
            params.update(hf_clip=str(_pickle_only_clip(root, res)))
        elif kind == "broken-config":
            folder = root / "broken-clip"
            write(folder / "config.json", "{not json")
            write(folder / "model.safetensors", b"garbage")
            params.update(hf_clip=str(folder))
        write(root / "out" / "result.jsonl", '{"text": "the previous run\'s result", "images": []}\n')
        recipe = write(root / "recipe.yaml", f"dataset_path: {json.dumps(str(dataset))}\n"
                                             f"export_path: {json.dumps(str(root / 'out' / 'result.jsonl'))}\nnp: 1\n"
                                             f"process:\n  - image_text_similarity_filter: {json.dumps(params)}\n")
        return Spec(["data", "run", str(recipe), "-q"], outputs=["out"], expect="error",
                    stage="run", data_out="out/result.jsonl", good=[good_caption(k) for k in range(GOOD_COUNT)],
                    checks=extra_checks)

    return build


def _run_paths(kind: str) -> Callable[[Path, Resources], Spec]:
    """export_path reaching the input by another name, or where nothing can be written."""

    def build(root: Path, _res: Resources) -> Spec:
        data = root / "data"
        dataset, _ = _jsonl_dataset(data, [], {}, name="result.jsonl")
        expect, outputs = "error", []
        if kind == "through-symlinked-folder":
            os.symlink(data, root / "alias")
            export = root / "alias" / "result.jsonl"
        elif kind == "stats-file-is-input":
            dataset = dataset.rename(data / "r_stats.jsonl")
            export = data / "r.jsonl"
        elif kind == "report-file-is-input":
            dataset = dataset.rename(data / "r_report.json")
            export = data / "r.jsonl"
        elif kind == "export-is-directory":
            (root / "out" / "result.jsonl").mkdir(parents=True)
            export, outputs = root / "out" / "result.jsonl", ["out"]
        elif kind == "export-unwritable":
            export = unwritable_dir(root) / "result.jsonl"
        elif kind == "export-through-file":
            write(root / "afile", "a file, not a folder")
            export = root / "afile" / "result.jsonl"
        elif kind == "dataset-is-fifo":
            dataset = data / "piped.jsonl"
            place(dataset, FIFO)
            export, outputs, expect = root / "out" / "result.jsonl", ["out"], "any"
        elif kind == "dataset-folder-two-jsonl":
            shutil.copy(data / "result.jsonl", data / "second.jsonl")
            dataset, export, outputs = data, root / "out" / "result.jsonl", ["out"]
        else:
            raise ValueError(kind)
        recipe = _recipe(root, dataset, export)
        return Spec(["data", "run", str(recipe), "-q"], outputs=outputs, expect=expect)

    return build


def _run_stale_temp(root: Path, res: Resources) -> Spec:
    spec = _run_rows([], {})(root, res)
    stale = ".result.jsonl.999999.deadbeef.tmp"
    write(root / "out" / stale, '{"text": "half a row')
    spec.checks.append(missing(f"out/{stale}", "temp file of a killed run left behind"))
    return spec


def _run_cases() -> list[Case]:
    cases = []
    for row, (family, line, files) in BAD_ROWS.items():
        cases.append(Case("data-run", row, family, _run_rows([line], files, maybe=maybe_caption(row))))
    cases += [
        Case("data-run", "image-fifo-png-np2", "hang", _run_rows([BAD_ROWS["image-fifo-png"][1]], BAD_ROWS["image-fifo-png"][2], np=2)),
        Case("data-run", "image-ztxt-bomb-np2", "decoder", _run_rows([BAD_ROWS["image-ztxt-bomb-png"][1]], BAD_ROWS["image-ztxt-bomb-png"][2], np=2)),
        Case("data-run", "tricky-modes-kept", "modes",
             lambda root, res: _tricky_run(root, res)),
        Case("data-run", "stats-width-string", "foreign-stats", _run_rows([_stats_row('{"image_width": ["wide"], "image_height": [40]}')], {}, maybe=_RECOMPUTED)),
        Case("data-run", "stats-width-null", "foreign-stats", _run_rows([_stats_row('{"image_width": [null], "image_height": null}')], {}, maybe=_RECOMPUTED)),
        Case("data-run", "stats-width-scalar-string", "foreign-stats", _run_rows([_stats_row('{"image_width": "48", "image_height": "40"}')], {}, maybe=_RECOMPUTED)),
        Case("data-run", "stats-aspect-inf", "foreign-stats",
             _run_rows([_stats_row('{"aspect_ratios": [Infinity]}')], {}, process=[{"image_aspect_ratio_filter": {"min_ratio": 0.1, "max_ratio": 10}}], maybe=_RECOMPUTED)),
        Case("data-run", "stats-aspect-nan", "foreign-stats",
             _run_rows([_stats_row('{"aspect_ratios": [NaN]}')], {}, process=[{"image_aspect_ratio_filter": {"min_ratio": 0.1, "max_ratio": 10}}], maybe=_RECOMPUTED)),
        Case("data-run", "stats-text-len-string", "foreign-stats",
             _run_rows([_stats_row('{"text_len": "long"}')], {}, process=[{"text_length_filter": {"min_len": 1}}], maybe=_RECOMPUTED)),
        Case("data-run", "stats-not-a-dict", "foreign-stats", _run_rows([_stats_row('[1, 2, 3]')], {},
                                                                          maybe="row with foreign stats")),
        Case("data-run", "stats-image-sizes-dict", "foreign-stats",
             _run_rows([_stats_row('{"image_sizes": {"a": 1}}')], {}, process=[{"image_size_filter": {"min_size": "1"}}], maybe=_RECOMPUTED)),
        Case("data-run", "recipe-billion-laughs", "hang", _run_recipe_text(_BILLION_LAUGHS + "dataset_path: {data}\nprocess: [{{image_shape_filter: {{}}}}]\n")),
        Case("data-run", "recipe-deep-nesting", "text", _run_recipe_text(_DEEP_YAML + "dataset_path: {data}\n")),
        Case("data-run", "recipe-is-a-list", "text", _run_recipe_text("- a\n- b\n")),
        Case("data-run", "recipe-is-a-scalar", "text", _run_recipe_text("just words\n")),
        Case("data-run", "recipe-empty-file", "text", _run_recipe_text("")),
        Case("data-run", "recipe-not-utf8", "text", _run_recipe_text(b"dataset_path: caf\xe9.jsonl\n")),
        Case("data-run", "recipe-process-not-a-list", "text", _run_recipe_text("dataset_path: {data}\nexport_path: {out}\nprocess: 5\n")),
        Case("data-run", "recipe-np-zero", "numbers", _run_recipe_text("dataset_path: {data}\nexport_path: {out}\nnp: 0\nprocess: [{{image_shape_filter: {{}}}}]\n")),
        Case("data-run", "recipe-np-string", "numbers", _run_recipe_text("dataset_path: {data}\nexport_path: {out}\nnp: many\nprocess: [{{image_shape_filter: {{}}}}]\n")),
        Case("data-run", "recipe-export-not-jsonl", "output", _run_recipe_text("dataset_path: {data}\nexport_path: out.parquet\nprocess: [{{image_shape_filter: {{}}}}]\n")),
        Case("data-run", "recipe-dataset-path-number", "text", _run_recipe_text("dataset_path: 5\nexport_path: {out}\nprocess: [{{image_shape_filter: {{}}}}]\n")),
        Case("data-run", "op-unknown", "text", _run_params("no_such_filter", {})),
        Case("data-run", "op-params-a-list", "text", _run_params("image_shape_filter", "[1, 2]", expect="error")),
        Case("data-run", "op-wrong-param-type", "text", _run_params("image_shape_filter", {"min_width": "wide"}, expect="error")),
        Case("data-run", "op-unknown-param", "text", _run_params("image_shape_filter", {"min_wdth": 10})),
        Case("data-run", "op-min-greater-than-max", "numbers",
             _run_params("image_shape_filter", {"min_width": 100, "max_width": 10}, checks=[refused_or_warned("min", "max", "range")])),
        Case("data-run", "op-negative-range", "numbers",
             _run_params("image_aspect_ratio_filter", {"min_ratio": -5, "max_ratio": -1}, checks=[refused_or_warned("ratio", "range", "negative")])),
        Case("data-run", "op-nan-param", "numbers",
             _run_params("image_aspect_ratio_filter", "{min_ratio: .nan, max_ratio: 3}", checks=[refused_or_warned("nan", "ratio")])),
        Case("data-run", "op-inf-param", "numbers",
             _run_params("text_length_filter", "{min_len: .inf}", checks=[refused_or_warned("inf", "min_len")])),
        Case("data-run", "op-huge-int-param", "numbers", _run_params("image_shape_filter", {"min_width": 10 ** 30})),
        Case("data-run", "op-size-unparseable", "numbers", _run_params("image_size_filter", {"min_size": "lots"}, expect="error")),
        Case("data-run", "stale-temp-of-killed-run", "data-loss", _run_stale_temp),
    ]
    for kind in ("trust-remote-code", "etc", "pickle-only", "broken-config"):
        cases.append(Case("data-run", f"hf-clip-{kind}", "code-run" if kind == "trust-remote-code" else "data-loss",
                          _run_clip(kind), timeout=MODEL_TIMEOUT, model=kind == "pickle-only"))
    for kind in ("through-symlinked-folder", "stats-file-is-input", "report-file-is-input", "export-is-directory",
                 "export-unwritable", "export-through-file", "dataset-is-fifo", "dataset-folder-two-jsonl"):
        family = "data-loss" if kind in ("through-symlinked-folder", "stats-file-is-input", "report-file-is-input") else "output"
        cases.append(Case("data-run", f"path-{kind}", "hang" if "fifo" in kind else family, _run_paths(kind)))
    return cases


def _tricky_run(root: Path, res: Resources) -> Spec:
    files = {f"images/{file}": data for file, data in TRICKY_IMAGES.values()}
    dataset, _ = _jsonl_dataset(root / "data", [], files)
    with open(dataset, "ab") as handle:
        for index, (file, _data) in enumerate(TRICKY_IMAGES.values()):
            handle.write(json.dumps({"text": f"tricky good {index}", "images": [f"images/{file}"]}).encode() + b"\n")
    recipe = _recipe(root, dataset, root / "out" / "result.jsonl")
    good = [good_caption(k) for k in range(GOOD_COUNT)] + [f"tricky good {i}" for i in range(len(TRICKY_IMAGES))]
    return Spec(["data", "run", str(recipe), "-q"], outputs=["out"], expect="ok", stage="run", data_out="out/result.jsonl",
                good=good)


# --- data export-csv -------------------------------------------------------------------------


def _export_rows(bad: list[bytes], files: dict[str, Thing], extra_good: dict[str, bytes] | None = None,
                 checks: list[Check] | None = None, maybe: str | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        dataset, numbers = _jsonl_dataset(root / "data", bad, {**files, **{f"images/{n}": d for n, d in (extra_good or {}).items()}},
                                          name="result.jsonl")
        good = [good_caption(k) for k in range(GOOD_COUNT)]
        with open(dataset, "ab") as handle:
            for index, name in enumerate(extra_good or {}):
                handle.write(json.dumps({"text": f"tricky good {index}", "images": [f"images/{name}"]}).encode() + b"\n")
                good.append(f"tricky good {index}")
        return Spec(["data", "export-csv", str(dataset), "--out", str(root / "out")], outputs=["out"], expect="ok",
                    stage="export", data_out="out", good=good, bad=_bad_markers(numbers, maybe)[0],
                    either=_bad_markers(numbers, maybe)[1],
                    checks=[exported_images_not_blank("out"), *(checks or [])])

    return build


def _export_out(kind: str) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        data = root / "data"
        dataset, _ = _jsonl_dataset(data, [], {}, name="result.jsonl")
        args = ["data", "export-csv", str(dataset), "--overwrite", "--out"]
        if kind == "same-folder":
            return Spec(args + [str(data)], expect="error")
        if kind == "images-folder":
            return Spec(args + [str(data / "images")], expect="error")
        if kind == "parent":
            return Spec(args + [str(root)], expect="error")
        if kind == "symlink":
            os.symlink(data, root / "link")
            return Spec(args + [str(root / "link")], expect="error")
        if kind == "is-the-input":
            return Spec(args + [str(dataset)], expect="error")
        if kind == "unwritable":
            return Spec(args + [str(unwritable_dir(root) / "out")], expect="error")
        if kind == "input-is-fifo":
            place(data / "piped.jsonl", FIFO)
            return Spec(["data", "export-csv", str(data / "piped.jsonl"), "--out", str(root / "out")], outputs=["out"])
        if kind == "input-is-folder":
            return Spec(["data", "export-csv", str(data), "--out", str(root / "out")], outputs=["out"])
        raise ValueError(kind)

    return build


def _export_cases() -> list[Case]:
    cases = [Case("data-export-csv", row, family, _export_rows([line], files, maybe=maybe_caption(row)))
             for row, (family, line, files) in BAD_ROWS.items()]
    for name, (file, data) in TRICKY_IMAGES.items():
        checks = [exported_portrait("out")] if name == "exif-rotated-jpeg" else []
        cases.append(Case("data-export-csv", f"mode-{name}", "wrong-output" if name == "float32-tiff" else "modes",
                          _export_rows([], {}, extra_good={file: data}, checks=checks)))
    cases.append(Case("data-export-csv", "text-with-dj-tokens-and-newlines", "text",
                      _export_text_case))
    for kind in ("same-folder", "images-folder", "parent", "symlink", "is-the-input", "unwritable", "input-is-fifo",
                 "input-is-folder"):
        family = "data-loss" if kind in ("same-folder", "images-folder", "parent", "symlink", "is-the-input") else "output"
        cases.append(Case("data-export-csv", f"out-{kind}", "hang" if "fifo" in kind else family, _export_out(kind)))
    return cases


def _export_text_case(root: Path, res: Resources) -> Spec:
    """A caption with newlines, quotes, commas and Data-Juicer tokens must survive the csv round trip as one row."""
    line = json.dumps({"text": 'line one\nline "two", <__dj__image> three\r\n', "images": ["images/extra.png"]}).encode()
    spec = _export_rows([line], {})(root, res)
    spec.bad = []
    spec.good.append('line one line "two", three')
    return spec


# --- train -----------------------------------------------------------------------------------

TRAIN_FAMILY = "sd15"


def train_args(model: Path, data: Path, out: Path, max_steps: int = 1) -> list[str]:
    """The tiny training run every train case starts from (64 px, rank 2, one step)."""
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--resolution", "64", "--rank", "2",
            "--max-steps", str(max_steps), "--no-gradient-checkpointing", "--batch-size", "1"]


def reported_in_output(*markers: str) -> Check:
    """Exit 0 means the bad rows were skipped: the output must name each of them."""

    def check(_root: Path, code: int, text: str) -> list[str]:
        if code != 0:
            return []
        return [f"skipped row '{m}' not named in the output" for m in markers if not re.search(re.escape(m) + r"\b", text)]

    return check


def _train_data(root: Path, res: Resources, rows: bytes = b"", files: dict[str, Thing] | None = None,
                metadata: bytes | None = None, name: str = "metadata.csv") -> Path:
    data = root / "data"
    shutil.copytree(res.train_data(), data)
    for rel, thing in (files or {}).items():
        place(data / rel, thing)
    if metadata is not None:
        (data / "metadata.csv").unlink()
        write(data / name, metadata)
    elif rows:
        with open(data / "metadata.csv", "ab") as handle:
            handle.write(rows)
    return data


def _train_rows(rows: bytes, files: dict[str, Thing] | None = None, expect: str = "any", bad_line: int | None = None,
                checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        data = _train_data(root, res, rows, files)
        lines = (data / "metadata.csv").read_bytes().count(b"\n")
        extra = [reported_in_output(f"line {bad_line or lines}")] if expect == "ok" else []
        return Spec(train_args(res.model(TRAIN_FAMILY), data, root / "run"), outputs=["run"], expect=expect,
                    checks=[lora_finite("run/lora.safetensors"), *extra, *(checks or [])])

    return build


def _train_metadata(metadata: bytes, name: str = "metadata.csv", expect: str = "any",
                    checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        data = _train_data(root, res, metadata=metadata, name=name)
        return Spec(train_args(res.model(TRAIN_FAMILY), data, root / "run"), outputs=["run"], expect=expect,
                    checks=checks or [])

    return build


def _train_flags(*flags: str, expect: str = "error", family: str = TRAIN_FAMILY, config: str | None = None,
                 checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        args = train_args(res.model(family), res.train_data(), root / "run") + list(flags)
        if config is not None:
            args.insert(1, str(write(root / "train.yaml", config)))
        return Spec(args, outputs=["run"], expect=expect, checks=[lora_finite("run/lora.safetensors"), *(checks or [])])

    return build


def _train_out(kind: str) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        data = _train_data(root, res)
        args = train_args(res.model(TRAIN_FAMILY), data, root / "run")
        out_at = args.index("--out") + 1
        if kind == "existing-file":
            args[out_at] = str(write(root / "afile.txt", "a user's file"))
        elif kind == "unwritable":
            args[out_at] = str(unwritable_dir(root) / "run")
        elif kind == "the-data-folder":
            args[out_at] = str(data)
        elif kind == "inside-data-folder":
            args[out_at] = str(data / "run")
        elif kind == "cache-dir-is-a-file":
            args += ["--cache-dir", str(write(root / "cache.txt", "a user's file"))]
            return Spec(args, outputs=["run"], expect="error")
        elif kind == "cache-dir-is-the-data":
            args += ["--cache-dir", str(data)]
            return Spec(args, outputs=["run"], expect="error")
        return Spec(args, expect="error")

    return build


def _damaged_checkpoints_kept(count: int) -> Check:
    def check(root: Path, _code: int, _text: str) -> list[str]:
        kept = [p for p in (root / "run" / "checkpoints").glob("step-*") if (p / "lora_params.safetensors").is_file()]
        return [] if len(kept) >= count else [f"only {len(kept)} of {count} damaged checkpoints are still there"]

    return check


def _train_resume(damage: str) -> Callable[[Path, Resources], Spec]:
    """A finished run with checkpoints step-1..3 whose newest checkpoint or a cache entry is damaged; --resume."""

    def build(root: Path, res: Resources) -> Spec:
        run = root / "run"
        shutil.copytree(res.trained(), run, symlinks=True)
        newest = sorted((run / "checkpoints").glob("step-*"))[-1]
        if damage == "lora-truncated":
            data = (newest / "lora_params.safetensors").read_bytes()
            (newest / "lora_params.safetensors").write_bytes(data[: len(data) // 2])
        elif damage == "lora-empty":
            (newest / "lora_params.safetensors").write_bytes(b"")
        elif damage == "lora-not-safetensors":
            (newest / "lora_params.safetensors").write_bytes(bf.garbage(1, 4096))
        elif damage == "optimizer-truncated":
            data = (newest / "optimizer.pt").read_bytes()
            (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
        elif damage == "optimizer-empty":
            (newest / "optimizer.pt").write_bytes(b"")
        elif damage == "rng-garbage":
            (newest / "rng.pt").write_bytes(bf.garbage(2, 1024))
        elif damage == "state-json-invalid":
            (newest / "state.json").write_text("{not json", encoding="utf-8")
        elif damage == "state-json-a-list":
            (newest / "state.json").write_text("[1, 2]", encoding="utf-8")
        elif damage == "cache-entry-truncated":
            entry = sorted((run / "cache").rglob("*.safetensors"))[0]
            entry.write_bytes(entry.read_bytes()[:100])
        elif damage == "cache-entry-empty":
            entry = sorted((run / "cache").rglob("*.safetensors"))[-1]
            entry.write_bytes(b"")
        elif damage == "all-checkpoints-empty":
            for folder in (run / "checkpoints").glob("step-*"):
                (folder / "lora_params.safetensors").write_bytes(b"")
        else:
            raise ValueError(damage)
        args = train_args(res.model(TRAIN_FAMILY), res.train_data(), run, max_steps=3) + ["--resume", "--checkpoint-every", "1"]
        checks = [lora_finite("run/lora.safetensors")]
        if damage == "all-checkpoints-empty":
            # No checkpoint can be resumed: either refuse, or start over with a warning that names them,
            # keeping every damaged checkpoint (moved aside, never deleted).
            checks += [refused_or_warned("checkpoint"), _damaged_checkpoints_kept(2)]
        return Spec(args, outputs=["run"], expect="any" if damage == "all-checkpoints-empty" else "ok",
                    volatile=["run/config.yaml"], checks=checks)

    return build


def _train_cases() -> list[Case]:
    T = MODEL_TIMEOUT
    big = b"x" * 150_000
    cases = []
    for name in ("truncated-png", "ztxt-bomb-png", "corrupt-avif-named-png", "bomb-png", "fifo-png", "directory-png"):
        family, file, thing = BAD_IMAGES[name]
        cases.append(Case("train", f"data-{name}", family,
                          _train_rows(f"images/{file},bad image {name}\n".encode(), {f"images/{file}": thing}, expect="ok"),
                          timeout=T, model=True))
    cases += [
        Case("train", "data-float32-tiff", "wrong-output",
             _train_rows(b"images/float.tif,float image\n", {"images/float.tif": bf.float32_tiff()}), timeout=T, model=True),
        Case("train", "data-nul-in-file-name", "text", _train_rows(b"images/a\x00.png,nul\n", expect="ok"), timeout=T, model=True),
        Case("train", "data-empty-file-name", "text", _train_rows(b",empty name\n", expect="ok"), timeout=T, model=True),
        Case("train", "data-dot-file-name", "text", _train_rows(b".,dot name\n", expect="ok"), timeout=T, model=True),
        Case("train", "data-150kb-caption", "text", _train_rows(b"images/00.png," + big + b"\n"), timeout=T, model=True),
        Case("train", "data-unterminated-quote", "wrong-output", _train_rows(b'images/00.png,"never closed\nimages/01.png,next\n'),
             timeout=T, model=True),
        Case("train", "data-csv-not-utf8", "text", _train_rows(b"images/00.png,caf\xe9\n"), timeout=T, model=True),
        Case("train", "data-csv-no-text-column", "text", _train_metadata(b"file_name\nimages/00.png\n"), timeout=T, model=True),
        Case("train", "data-all-captions-empty", "wrong-output",
             _train_metadata(b"file_name,text\nimages/00.png,\nimages/01.png,\n",
                             checks=[refused_or_warned("caption", "empty")]), timeout=T, model=True),
        Case("train", "data-jsonl-row-array", "text",
             _train_metadata(b'{"text": "ok", "file_name": "images/00.png"}\n["a", "b"]\n', name="metadata.jsonl"),
             timeout=T, model=True),
        Case("train", "data-jsonl-images-number", "text",
             _train_metadata(b'{"text": "ok", "file_name": "images/00.png"}\n{"text": "n", "images": 5}\n', name="metadata.jsonl"),
             timeout=T, model=True),
        Case("train", "data-jsonl-deep-array", "text",
             _train_metadata(b'{"text": "ok", "file_name": "images/00.png"}\n' + DEEP_ARRAY + b"\n", name="metadata.jsonl"),
             timeout=T, model=True),
        Case("train", "data-jsonl-lone-surrogate", "text",
             _train_metadata(b'{"text": "bad \\ud800", "file_name": "images/00.png"}\n{"text": "ok", "file_name": "images/01.png"}\n',
                             name="metadata.jsonl"), timeout=T, model=True),
        Case("train", "seed-negative", "numbers", _train_flags("--seed", "-1", expect="any"), timeout=T, model=True),
        Case("train", "seed-2-pow-32", "numbers", _train_flags("--seed", str(2 ** 32), expect="any"), timeout=T, model=True),
        Case("train", "seed-2-pow-64", "numbers", _train_flags("--seed", str(2 ** 64), expect="any"), timeout=T, model=True),
        Case("train", "rank-2000", "numbers", _train_flags("--rank", "2000", expect="any"), timeout=T, model=True),
        Case("train", "target-modules-empty", "numbers", _train_flags(config="target_modules: []\n"), timeout=T, model=True),
        Case("train", "target-modules-unknown", "numbers", _train_flags(config="target_modules: [no_such_layer]\n"), timeout=T, model=True),
        Case("train", "lr-nan", "numbers", _train_flags(config="lr: .nan\n"), timeout=T, model=True),
        Case("train", "lr-inf", "numbers", _train_flags(config="lr: .inf\n"), timeout=T, model=True),
        Case("train", "noise-offset-nan", "numbers", _train_flags(config="noise_offset: .nan\n"), timeout=T, model=True),
        Case("train", "resolution-100000", "numbers", _train_flags("--resolution", "100000"), timeout=T, model=True),
        Case("train", "config-billion-laughs", "hang", _train_flags(config=_BILLION_LAUGHS), timeout=T, model=True),
        Case("train", "config-a-list", "text", _train_flags(config="- a\n- b\n"), timeout=T, model=True),
        Case("train", "config-wrong-type", "text", _train_flags(config="lr: lots\n"), timeout=T, model=True),
        Case("train", "kolors-as-sdxl", "family", _train_flags("--family", "sdxl", family="kolors"), timeout=T, model=True),
        Case("train", "kolors-as-sd15", "family", _train_flags("--family", "sd15", family="kolors"), timeout=T, model=True),
        Case("train", "model-is-etc", "family", lambda root, res: Spec(
            train_args(Path("/etc"), res.train_data(), root / "run"), outputs=["run"], expect="error"), timeout=T, model=True),
        Case("train", "model-garbage-safetensors", "damaged-state", lambda root, res: Spec(
            train_args(write(root / "model.safetensors", bf.garbage(3, 4096)), res.train_data(), root / "run"),
            outputs=["run"], expect="error"), timeout=T, model=True),
    ]
    for kind in ("existing-file", "unwritable", "the-data-folder", "inside-data-folder", "cache-dir-is-a-file",
                 "cache-dir-is-the-data"):
        cases.append(Case("train", f"out-{kind}", "data-loss" if "data" in kind else "output", _train_out(kind),
                          timeout=T, model=True))
    for damage in ("lora-truncated", "lora-empty", "lora-not-safetensors", "optimizer-truncated", "optimizer-empty",
                   "rng-garbage", "state-json-invalid", "state-json-a-list", "cache-entry-truncated", "cache-entry-empty",
                   "all-checkpoints-empty"):
        cases.append(Case("train", f"resume-{damage}", "damaged-state", _train_resume(damage), timeout=T, model=True))
    return cases


# --- generate --------------------------------------------------------------------------------

GEN_FAMILY = "sd15"
STORY = """# the user's story: comments must survive
title: fuzz
defaults: {{steps: 1, cfg: 4, width: 64, height: 64, seed: {seed}}}
{extra}panels:
  - prompt: {prompt}
    {panel}
  - prompt: a blue dog
"""


def story_text(seed: str = "1", prompt: str = "a red cat", panel: str = "caption: one", extra: str = "",
               defaults: str | None = None) -> str:
    text = STORY.format(seed=seed, prompt=prompt, panel=panel, extra=extra)
    if defaults is not None:
        text = text.replace("defaults: {steps: 1, cfg: 4, width: 64, height: 64, seed: 1}", f"defaults: {defaults}")
    return text


def _gen_checks(run: str = "run") -> list[Check]:
    return [panels_not_blank(run), strict_json(f"{run}/manifest.json"), panels_match_manifest(run)]


def _gen(story: str | bytes | None = None, flags: tuple[str, ...] = (), expect: str = "any", family: str = GEN_FAMILY,
         files: dict[str, Thing] | None = None, checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        story_file = write(root / "story.yaml", story_text() if story is None else story)
        for rel, thing in (files or {}).items():
            place(root / rel, thing)
        resolved = [f.replace("{root}", str(root)).replace("{lora}", str(res.lora())) for f in flags]
        args = ["generate", str(story_file), "--model", str(res.model(family)), "--out", str(root / "run"), *resolved]
        return Spec(args, outputs=["run"], expect=expect, checks=[*_gen_checks(), *(checks or [])])

    return build


def _gen_out(kind: str) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        folder = root / "stories"
        story_file = write(folder / "story.yaml", story_text())
        args = ["generate", str(story_file), "--model", str(res.model(GEN_FAMILY)), "--out"]
        if kind == "story-folder":
            return Spec(args + [str(folder)], outputs=["stories"], protect=["stories/story.yaml"], checks=_gen_checks("stories"))
        if kind == "user-panel-in-out":
            place(root / "run" / "panel-01.png", bf.good_png(77))
            write(root / "run" / "manifest.json", '{"mine": "a file the user keeps here"}')
            return Spec(args + [str(root / "run")], outputs=["run"], protect=["run/panel-01.png", "run/manifest.json"])
        if kind == "stale-longer-run":
            run = root / "run"
            for index in range(1, 6):
                place(run / f"panel-{index:02d}.png", bf.good_png(index))
            write(run / "manifest.json", json.dumps({"title": "old", "panels": [{"file": f"panel-{i:02d}.png", "prompt": "old"}
                                                                                for i in range(1, 6)]}))
            return Spec(args + [str(run)], outputs=["run"], checks=_gen_checks())
        if kind == "existing-file":
            return Spec(args + [str(write(root / "afile.txt", "a user's file"))], expect="error")
        if kind == "unwritable":
            return Spec(args + [str(unwritable_dir(root) / "run")], expect="error")
        if kind == "is-the-story-file":
            return Spec(args + [str(story_file)], expect="error")
        raise ValueError(kind)

    return build


def _gen_cases() -> list[Case]:
    T = MODEL_TIMEOUT
    cases = [
        Case("generate", "seed-negative", "numbers", _gen(story_text(seed="-1"), expect="error")),
        Case("generate", "seed-2-pow-64", "numbers", _gen(story_text(seed=str(2 ** 64)))),
        Case("generate", "seed-2-pow-63", "numbers", _gen(story_text(seed=str(2 ** 63)))),
        Case("generate", "panel-seed-2-pow-70", "numbers", _gen(story_text(panel=f"seed: {2 ** 70}"))),
        Case("generate", "cfg-inf", "wrong-output", _gen(story_text(panel="cfg: .inf"))),
        Case("generate", "cfg-nan", "wrong-output", _gen(story_text(panel="cfg: .nan"))),
        Case("generate", "cfg-1e308", "wrong-output", _gen(story_text(panel="cfg: 1e308"))),
        Case("generate", "width-100000", "numbers",
             _gen(story_text(defaults="{steps: 1, cfg: 4, width: 100000, height: 100000, seed: 1}"), expect="error")),
        Case("generate", "width-zero", "numbers", _gen(story_text(defaults="{steps: 1, width: 0, height: 64}"), expect="error")),
        Case("generate", "width-not-multiple-of-8", "numbers", _gen(story_text(defaults="{steps: 1, width: 63, height: 64}"), expect="error")),
        Case("generate", "width-a-string", "text", _gen(story_text(defaults="{steps: 1, width: wide, height: 64}"), expect="error")),
        Case("generate", "steps-zero", "numbers", _gen(story_text(defaults="{steps: 0, width: 64, height: 64}"), expect="error")),
        Case("generate", "steps-huge", "numbers", _gen(story_text(defaults="{steps: 1000000000, width: 64, height: 64}"), expect="error")),
        Case("generate", "sampler-unknown", "text", _gen(story_text(defaults="{steps: 1, width: 64, height: 64, sampler: Bogus}"), expect="error")),
        Case("generate", "prompt-lone-surrogate", "text", _gen(story_text(prompt='"bad \\ud800 prompt"'))),
        Case("generate", "prompt-100k-chars", "text", _gen(story_text(prompt="cat " * 25_000))),
        Case("generate", "prompt-nul", "text", _gen(story_text(prompt='"nul \\0 here"'))),
        Case("generate", "story-billion-laughs", "hang", _gen(_BILLION_LAUGHS + story_text(), expect="error")),
        Case("generate", "story-deep-nesting", "text", _gen(_DEEP_YAML + story_text(), expect="error")),
        Case("generate", "story-a-list", "text", _gen("- a\n- b\n", expect="error")),
        Case("generate", "story-a-scalar", "text", _gen("once upon a time\n", expect="error")),
        Case("generate", "story-empty", "text", _gen("", expect="error")),
        Case("generate", "story-not-utf8", "text", _gen(b"title: caf\xe9\npanels:\n  - prompt: x\n", expect="error")),
        Case("generate", "story-no-panels", "text", _gen("title: x\npanels: []\n", expect="error")),
        Case("generate", "story-panels-strings", "text", _gen("panels: [a, b]\n", expect="error")),
        Case("generate", "story-is-fifo", "hang", lambda root, res: (place(root / "piped.yaml", FIFO), Spec(
            ["generate", str(root / "piped.yaml"), "--model", str(res.model(GEN_FAMILY)), "--out", str(root / "run")],
            outputs=["run"], expect="error"))[1]),
        Case("generate", "lora-scale-nan", "wrong-output", _gen(flags=("--lora", "{lora}", "--lora-scale", "nan"))),
        Case("generate", "lora-scale-inf", "wrong-output", _gen(flags=("--lora", "{lora}", "--lora-scale", "inf"))),
        Case("generate", "lora-scale-1e30", "wrong-output", _gen(flags=("--lora", "{lora}", "--lora-scale", "1e30"))),
        Case("generate", "lora-garbage", "damaged-state",
             _gen(flags=("--lora", "{root}/bad.safetensors"), files={"bad.safetensors": bf.garbage(4, 2048)}, expect="error")),
        Case("generate", "lora-empty", "damaged-state",
             _gen(flags=("--lora", "{root}/empty.safetensors"), files={"empty.safetensors": b""}, expect="error")),
        Case("generate", "lora-fifo", "hang", _gen(flags=("--lora", "{root}/pipe.safetensors"), files={"pipe.safetensors": FIFO},
                                                   expect="error")),
        Case("generate", "lora-directory", "damaged-state", _gen(flags=("--lora", "{root}/dir.safetensors"),
                                                                 files={"dir.safetensors": DIR}, expect="error")),
        Case("generate", "lora-other-family", "family", _gen(flags=("--lora", "{lora}"), family="kolors", expect="error")),
        Case("generate", "kolors-as-sdxl", "family", _gen(flags=("--family", "sdxl"), family="kolors", expect="error")),
        Case("generate", "kolors-as-sd15", "family", _gen(flags=("--family", "sd15"), family="kolors", expect="error")),
        Case("generate", "family-unknown", "family", _gen(flags=("--family", "dalle"), expect="error")),
        Case("generate", "model-etc", "family", lambda root, res: Spec(
            ["generate", str(write(root / "story.yaml", story_text())), "--model", "/etc", "--out", str(root / "run")],
            outputs=["run"], expect="error")),
        Case("generate", "model-garbage-file", "damaged-state", lambda root, res: Spec(
            ["generate", str(write(root / "story.yaml", story_text())), "--model",
             str(write(root / "m.safetensors", bf.garbage(5, 4096))), "--out", str(root / "run")], outputs=["run"], expect="error")),
        Case("generate", "batch-size-zero", "numbers", _gen(flags=("--batch-size", "0"))),  # 0 may mean "auto"
        Case("generate", "batch-size-negative", "numbers", _gen(flags=("--batch-size", "-3"), expect="error")),
        Case("generate", "consistency-bogus", "text", _gen(flags=("--consistency", "bogus"), expect="error")),
    ]
    for name in ("ztxt-bomb-png", "avif-named-png", "truncated-png", "fifo-png", "directory-png", "bomb-png"):
        family, file, thing = BAD_IMAGES[name]
        extra = f"consistency: {{mode: reference, reference_image: {json.dumps(file)}}}\n"
        cases.append(Case("generate", f"reference-image-{name}", family,
                          lambda root, res, extra=extra, file=file, thing=thing: _gen_in_cwd(root, res, extra, file, thing)))
    for kind in ("story-folder", "user-panel-in-out", "stale-longer-run", "existing-file", "unwritable", "is-the-story-file"):
        cases.append(Case("generate", f"out-{kind}", "output" if kind in ("existing-file", "unwritable") else "data-loss",
                          _gen_out(kind)))
    return [Case(c.entry, c.name, c.family, c.build, timeout=T, model=True) for c in cases]


def _gen_in_cwd(root: Path, res: Resources, extra: str, file: str, thing: Thing) -> Spec:
    place(root / file, thing)
    return _gen(story_text(extra=extra.replace(json.dumps(file), json.dumps(str(root / file)))), expect="error")(root, res)


# --- regenerate ------------------------------------------------------------------------------


def _regen(panel: str = "1", seed: str = "7", damage: Callable[[Path], None] | None = None, expect: str = "any",
           extra: tuple[str, ...] = (), checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        run = root / "run"
        shutil.copytree(res.run(), run)
        if damage is not None:
            damage(run)
        return Spec(["regenerate", str(run), "--panel", panel, "--seed", seed, *extra], outputs=["run", ".run."],
                    expect=expect, checks=[*_gen_checks(), *(checks or [])])

    return build


def _manifest_edit(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        result = change(data)
        (run / "manifest.json").write_text(json.dumps(data if result is None else result), encoding="utf-8")

    return damage


def _regen_cases() -> list[Case]:
    cases = [
        Case("regenerate", "seed-negative", "numbers", _regen(seed="-5", expect="error")),
        Case("regenerate", "seed-2-pow-64", "numbers", _regen(seed=str(2 ** 64))),
        Case("regenerate", "seed-2-pow-63", "numbers", _regen(seed=str(2 ** 63))),
        Case("regenerate", "panel-zero", "numbers", _regen(panel="0", expect="error")),
        Case("regenerate", "panel-99", "numbers", _regen(panel="99", expect="error")),
        Case("regenerate", "panel-negative", "numbers", _regen(panel="-1", expect="error")),
        Case("regenerate", "manifest-missing", "foreign-stats", _regen(damage=lambda run: (run / "manifest.json").unlink())),
        Case("regenerate", "manifest-invalid-json", "foreign-stats",
             _regen(damage=lambda run: (run / "manifest.json").write_text("{broken", encoding="utf-8"), expect="error",
                    checks=[one_line_mention("manifest.json")])),
        Case("regenerate", "manifest-a-list", "foreign-stats",
             _regen(damage=lambda run: (run / "manifest.json").write_text("[]", encoding="utf-8"), expect="error")),
        Case("regenerate", "manifest-panels-not-a-list", "foreign-stats",
             _regen(damage=_manifest_edit(lambda m: m.update(panels="many")))),
        Case("regenerate", "manifest-shorter-than-story", "data-loss",
             _regen(panel="2", damage=_manifest_edit(lambda m: m.update(panels=m["panels"][:1])))),
        Case("regenerate", "manifest-model-missing", "foreign-stats",
             _regen(damage=_manifest_edit(lambda m: m.update(model="/nonexistent/model")), expect="error")),
        Case("regenerate", "manifest-model-a-number", "foreign-stats", _regen(damage=_manifest_edit(lambda m: m.update(model=5)))),
        Case("regenerate", "manifest-lora-garbage", "foreign-stats",
             _regen(damage=_manifest_edit(lambda m: m.update(lora={"path": "/etc/passwd", "scale": "strong"})))),
        Case("regenerate", "manifest-not-utf8", "text",
             _regen(damage=lambda run: (run / "manifest.json").write_bytes(b'{"title": "caf\xe9"}'))),
        Case("regenerate", "story-missing", "foreign-stats", _regen(damage=lambda run: (run / "story.yaml").unlink())),
        Case("regenerate", "story-billion-laughs", "hang",
             _regen(damage=lambda run: write(run / "story.yaml", _BILLION_LAUGHS + "panels: [{prompt: x}]\n"), expect="error")),
        Case("regenerate", "story-cfg-inf", "wrong-output",
             _regen(damage=lambda run: write(run / "story.yaml", (run / "story.yaml").read_text(encoding="utf-8")
                                             .replace("cfg: 4.0", "cfg: .inf")))),
        Case("regenerate", "other-panel-is-fifo", "hang",
             _regen(damage=lambda run: ((run / "panel-02.png").unlink(), place(run / "panel-02.png", FIFO)))),
        Case("regenerate", "other-panel-ztxt-bomb", "decoder",
             _regen(damage=lambda run: (run / "panel-02.png").write_bytes(bf.ztxt_bomb_png()))),
        Case("regenerate", "run-is-a-file", "output", lambda root, res: Spec(
            ["regenerate", str(write(root / "run.txt", "a file")), "--panel", "1", "--seed", "1"], expect="error")),
        Case("regenerate", "lora-flag-garbage", "damaged-state",
             _regen(damage=lambda run: write(run / "bad.safetensors", bf.garbage(6, 999)), expect="error",
                    extra=("--lora", "RUN/bad.safetensors"))),
    ]
    fixed = []
    for case in cases:
        build = case.build
        if case.name == "lora-flag-garbage":
            def build(root: Path, res: Resources, inner=case.build) -> Spec:
                spec = inner(root, res)
                spec.args = [a.replace("RUN", str(root / "run")) for a in spec.args]
                return spec
        fixed.append(Case(case.entry, case.name, case.family, build, timeout=MODEL_TIMEOUT, model=True))
    return fixed


# --- grid ------------------------------------------------------------------------------------


def _grid(flags: tuple[str, ...] = (), bad: tuple[str, Thing] | None = None, expect: str = "any",
          extra_images: dict[str, bytes] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, _res: Resources) -> Spec:
        images = []
        for k in range(2):
            images.append(root / "in" / f"panel-{k}.png")
            place(images[-1], bf.good_png(k))
        if bad is not None:
            images.insert(1, root / "in" / bad[0])
            place(images[1], bad[1])
        for name, data in (extra_images or {}).items():
            images.append(root / "in" / name)
            place(images[-1], data)
        args = ["grid", *map(str, images), "--out", str(root / "board.png"),
                *[f.replace("{root}", str(root)) for f in flags]]
        return Spec(args, outputs=["board.png"], expect=expect)

    return build


def _grid_out(kind: str) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        spec = _grid()(root, res)
        at = spec.args.index("--out") + 1
        first = root / "in" / "panel-0.png"
        if kind == "is-an-input":
            spec.args[at] = str(first)
            spec.checks.append(one_line_mention("panel-0.png"))
        elif kind == "symlink-to-input":
            os.symlink(first, root / "alias.png")
            spec.args[at] = str(root / "alias.png")
        elif kind == "existing-folder":
            (root / "folder.png").mkdir()
            spec.args[at] = str(root / "folder.png")
        elif kind == "unwritable":
            spec.args[at] = str(unwritable_dir(root) / "board.png")
        elif kind == "under-a-file":
            spec.args[at] = str(write(root / "afile", "x") / "board.png")
        elif kind == "unknown-extension":
            spec.args[at] = str(root / "board.xyz")
            return Spec(spec.args, outputs=["board.xyz"])
        spec.outputs, spec.expect = [], "error"
        return spec

    return build


def _grid_cases() -> list[Case]:
    cases = [Case("grid", f"input-{name}", family, _grid(bad=(file, thing), expect="any" if name in MAYBE_IMAGES else "error"))
             for name, (family, file, thing) in BAD_IMAGES.items()]
    cases += [
        Case("grid", "tricky-modes", "modes", _grid(extra_images={f: d for f, d in TRICKY_IMAGES.values()}, expect="ok")),
        Case("grid", "cols-zero", "numbers", _grid(("--cols", "0"))),
        Case("grid", "cols-negative", "numbers", _grid(("--cols", "-2"))),
        Case("grid", "cols-huge", "numbers", _grid(("--cols", "1000000000"))),
        Case("grid", "rows-zero", "numbers", _grid(("--rows", "0"))),
        Case("grid", "rows-too-few", "numbers", _grid(("--rows", "1", "--cols", "1"))),
        Case("grid", "resize-100000x100000", "numbers", _grid(("--resize", "100000x100000"), expect="error")),
        Case("grid", "resize-zero", "numbers", _grid(("--resize", "0x0"), expect="error")),
        Case("grid", "resize-negative", "numbers", _grid(("--resize", "-5x5"), expect="error")),
        Case("grid", "resize-garbage", "text", _grid(("--resize", "bigxsmall"), expect="error")),
        Case("grid", "resize-three-parts", "text", _grid(("--resize", "1x2x3"), expect="error")),
        Case("grid", "spacing-negative", "numbers", _grid(("--spacing", "-10"))),
        Case("grid", "spacing-huge", "numbers", _grid(("--spacing", "10000000"))),
        Case("grid", "title-lone-surrogate", "text", _grid(("--title", "caf\udce9 title"))),
        Case("grid", "input-latin1-name", "text", _grid(extra_images={"caf\udce9.png": bf.good_png(31)})),
        Case("grid", "title-10k-chars", "text", _grid(("--title", "标题" * 5000))),
        Case("grid", "captions-more-than-panels", "text", _grid(("--caption", "a", "--caption", "b", "--caption", "c",
                                                                "--caption", "d"))),
        Case("grid", "captions-from-garbage-metadata", "text",
             _grid(("--captions",), extra_images={"meta.png": bf.itxt_parameters_png()})),
        Case("grid", "captions-from-ztxt-bomb", "decoder",
             _grid(("--captions",), bad=("ztxt.png", bf.ztxt_bomb_png()), expect="error")),
    ]
    for kind in ("is-an-input", "symlink-to-input", "existing-folder", "unwritable", "under-a-file", "unknown-extension"):
        cases.append(Case("grid", f"out-{kind}", "data-loss" if "input" in kind else "output", _grid_out(kind)))
    return cases


# --- eval ------------------------------------------------------------------------------------


def _eval(damage: Callable[[Path, Resources], Any] | None = None, flags: tuple[str, ...] = (), expect: str = "any",
          clip: Callable[[Path, Resources], Path] | None = None, checks: list[Check] | None = None) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        run = root / "run"
        shutil.copytree(res.run(), run)
        if damage is not None:
            damage(run, res)
        model = clip(root, res) if clip is not None else res.clip()
        return Spec(["eval", str(run), "--clip", str(model), "--device", "cpu",
                     *[f.replace("{root}", str(root)) for f in flags]],
                    outputs=["run/scores.json", "run/storyboard_scored.png", "run/compare"], expect=expect,
                    checks=[strict_json("run/scores.json"), *(checks or [])])

    return build


def _swap_panel(thing: Thing) -> Callable[[Path, Resources], None]:
    def damage(run: Path, _res: Resources) -> None:
        (run / "panel-02.png").unlink()
        place(run / "panel-02.png", thing)

    return damage


def _eval_cases() -> list[Case]:
    cases = [Case("eval", f"panel-{name}", family, _eval(_swap_panel(thing), expect="any" if name in MAYBE_IMAGES else "error"))
             for name, (family, _file, thing) in BAD_IMAGES.items()
             if name in ("truncated-png", "ztxt-bomb-png", "iccp-bomb-png", "avif-named-png", "corrupt-avif-named-png",
                         "bomb-png", "fifo-png", "directory-png", "symlink-loop-png")]
    cases += [
        Case("eval", "manifest-missing", "foreign-stats", _eval(lambda run, _r: (run / "manifest.json").unlink())),
        Case("eval", "manifest-invalid-json", "foreign-stats",
             _eval(lambda run, _r: (run / "manifest.json").write_text("{oops", encoding="utf-8"), expect="error",
                   checks=[one_line_mention("manifest.json")])),
        Case("eval", "manifest-a-list", "foreign-stats",
             _eval(lambda run, _r: (run / "manifest.json").write_text("[1]", encoding="utf-8"), expect="error")),
        Case("eval", "manifest-panels-strings", "foreign-stats",
             _eval(lambda run, _r: _manifest_edit(lambda m: m.update(panels=["a", "b"]))(run))),
        Case("eval", "manifest-panel-file-traversal", "data-loss",
             _eval(lambda run, _r: _manifest_edit(lambda m: m["panels"][0].update(file="../../../../etc/passwd"))(run))),
        Case("eval", "manifest-prompt-a-number", "foreign-stats",
             _eval(lambda run, _r: _manifest_edit(lambda m: m["panels"][0].update(prompt=5))(run))),
        Case("eval", "manifest-deep-json", "text",
             _eval(lambda run, _r: (run / "manifest.json").write_bytes(DEEP_ARRAY), expect="error")),
        Case("eval", "manifest-is-fifo", "hang",
             _eval(lambda run, _r: ((run / "manifest.json").unlink(), place(run / "manifest.json", FIFO)))),
        Case("eval", "scores-json-is-a-folder", "output",
             _eval(lambda run, _r: (run / "scores.json").mkdir(), expect="error")),
        Case("eval", "clip-etc", "code-run", _eval(clip=lambda root, res: Path("/etc"), expect="error")),
        Case("eval", "clip-pickle-only", "code-run", _eval(clip=_pickle_only_clip, expect="error")),
        Case("eval", "clip-remote-code", "code-run", _eval(clip=lambda root, res: _remote_code_clip(root), expect="error")),
        Case("eval", "batch-size-zero", "numbers", _eval(flags=("--batch-size", "0"))),
        Case("eval", "batch-size-negative", "numbers", _eval(flags=("--batch-size", "-1"))),
        Case("eval", "aesthetic-garbage", "damaged-state",
             _eval(lambda run, _r: write(run.parent / "head.safetensors", bf.garbage(7, 500)),
                   flags=("--aesthetic", "{root}/head.safetensors"), expect="error")),
        Case("eval", "aesthetic-fifo", "hang",
             _eval(lambda run, _r: place(run.parent / "head.safetensors", FIFO),
                   flags=("--aesthetic", "{root}/head.safetensors"), expect="error")),
        Case("eval", "compare-lora-scale-nan", "numbers", _eval(flags=("--compare", "--lora-scale", "nan"), expect="error")),
        Case("eval", "run-is-a-file", "output", lambda root, res: Spec(
            ["eval", str(write(root / "run.txt", "x")), "--clip", str(res.clip())], expect="error")),
    ]
    return [Case(c.entry, c.name, c.family, c.build, timeout=MODEL_TIMEOUT, model=True) for c in cases]


# --- data clip-score -------------------------------------------------------------------------


def _clip_score(bad: list[bytes] = (), files: dict[str, Thing] | None = None, flags: tuple[str, ...] = (),
                expect: str = "any", clip: Callable[[Path, Resources], Path] | None = None,
                out: str = "scores.csv", report: bool = True) -> Callable[[Path, Resources], Spec]:
    def build(root: Path, res: Resources) -> Spec:
        dataset, numbers = _jsonl_dataset(root / "data", list(bad), files or {}, name="result.jsonl")
        model = clip(root, res) if clip is not None else res.clip()
        target = out.replace("{root}", str(root)).replace("{data}", str(dataset))
        args = ["data", "clip-score", str(dataset), "--clip", str(model), "--device", "cpu", "--out",
                target if os.path.isabs(target) else str(root / target), *flags]
        checks = [reported_in_output(*_line_markers(numbers))] if bad and report else []
        return Spec(args, outputs=[out] if not os.path.isabs(target) else [], expect=expect, checks=checks)

    return build


def _clip_score_cases() -> list[Case]:
    cases = []
    for name in ("truncated-png", "ztxt-bomb-png", "avif-named-png", "corrupt-avif-named-png", "bomb-png", "fifo-png",
                 "directory-png"):
        family, line, files = BAD_ROWS[f"image-{name}"]
        cases.append(Case("data-clip-score", f"image-{name}", family,
                          _clip_score([line], files, expect="ok", report=name not in MAYBE_IMAGES)))
    for row in ("row-array", "row-deep-array-200k", "row-lone-surrogate-text", "row-images-number", "row-nul-in-path"):
        family, line, files = BAD_ROWS[row]
        cases.append(Case("data-clip-score", row, family, _clip_score([line], files, expect="ok")))
    cases += [
        Case("data-clip-score", "batch-size-negative", "numbers", _clip_score(flags=("--batch-size", "-1"))),
        Case("data-clip-score", "out-is-the-input", "data-loss", _clip_score(out="{data}", expect="error")),
        Case("data-clip-score", "out-existing-folder", "output",
             lambda root, res: (os.mkdir(root / "folder.csv"), _clip_score(out="folder.csv", expect="error")(root, res))[1]),
        Case("data-clip-score", "out-unwritable", "output",
             lambda root, res: _clip_score(out=str(unwritable_dir(root) / "s.csv"), expect="error")(root, res)),
        Case("data-clip-score", "clip-etc", "code-run", _clip_score(clip=lambda root, res: Path("/etc"), expect="error")),
        Case("data-clip-score", "clip-pickle-only", "code-run", _clip_score(clip=_pickle_only_clip, expect="error")),
        Case("data-clip-score", "clip-remote-code", "code-run",
             _clip_score(clip=lambda root, res: _remote_code_clip(root), expect="error")),
        Case("data-clip-score", "csv-not-utf8", "text", lambda root, res: Spec(
            ["data", "clip-score", str(write(root / "metadata.csv", b"file_name,text\nimages/a.png,caf\xe9\n")), "--clip",
             str(res.clip()), "--device", "cpu", "--out", str(root / "s.csv")], outputs=["s.csv"])),
        Case("data-clip-score", "input-is-fifo", "hang", lambda root, res: (place(root / "piped.jsonl", FIFO), Spec(
            ["data", "clip-score", str(root / "piped.jsonl"), "--clip", str(res.clip()), "--device", "cpu", "--out",
             str(root / "s.csv")], outputs=["s.csv"], expect="error"))[1]),
    ]
    return [Case(c.entry, c.name, c.family, c.build, timeout=MODEL_TIMEOUT, model=True) for c in cases]


def all_cases() -> list[Case]:
    """Every case of the corpus, in a stable order; ids are unique."""
    cases = (_import_cases() + _run_cases() + _export_cases() + _train_cases() + _gen_cases() + _regen_cases()
             + _grid_cases() + _eval_cases() + _clip_score_cases())
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise AssertionError(f"duplicate case ids: {sorted(duplicates)}")
    return cases


def cases_for(entry: str) -> list[Case]:
    return [c for c in all_cases() if c.entry == entry]
