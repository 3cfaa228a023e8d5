"""The web app's workspace: the one folder it reads from, writes to and serves.

Every path a user types, uploads or names indirectly (a recipe's
``dataset_path``, an image listed in a ``metadata.jsonl``, a symlink inside an
imported folder) goes through :class:`Workspace` before anything opens it:
it is resolved (``..`` collapsed, symlinks followed) and refused with a
:class:`PathRefused` unless the result lies inside the workspace.

Layout (created on first use)::

    models/     model folders (the embedded toy Kolors and toy CLIP are written here when missing)
    uploads/    validated uploads, one folder per upload
    datasets/   imported datasets (metadata.jsonl + images/)
    recipes/    recipes saved from the editor
    curated/    recipe results (result.jsonl, stats, reports)
    train/      training folders (metadata.csv + images/)
    runs/       LoRA training runs
    stories/    generated stories
    downloads/  zips made for download
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lorastory.data.dataset import safe_stem
from lorastory.errors import BadImageError, LorastoryError
from lorastory.fileio import lies_within
from lorastory.images import IMAGE_EXTENSIONS, probe_image

FOLDERS = ("models", "uploads", "datasets", "recipes", "curated", "train", "runs", "stories", "downloads")
_NAME = re.compile(r"^[\w][\w.\-]{0,63}$", re.UNICODE)

# Upload limits: big enough for real photos, small enough that one request cannot fill the disk.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_ZIP_BYTES = 2 * 1024 * 1024 * 1024
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_RATIO = 200  # uncompressed / compressed, per member: beyond this it is a zip bomb
MAX_TEXT_BYTES = 64 * 1024


class PathRefused(LorastoryError):
    """A path that leaves the workspace (or is otherwise not allowed)."""


@dataclass
class UploadResult:
    """What an upload left in the workspace and what it refused, with reasons."""

    folder: Path
    images: int = 0
    captions: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True if ``path``, with symlinks resolved, is ``root`` or lies under it."""
    return lies_within(path, root)


class Workspace:
    """A root folder and the checks that keep the app inside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(path))
        for name in FOLDERS:
            (self.root / name).mkdir(exist_ok=True)

    # --- paths -----------------------------------------------------------------------

    def resolve(self, user_path: str | os.PathLike[str] | None, *, must_exist: bool = False) -> Path:
        """``user_path`` (relative to the workspace, or absolute) resolved; refused if it leaves the workspace."""
        text = os.fspath(user_path) if user_path is not None else ""
        text = text.strip()
        if not text:
            raise PathRefused("no path given")
        if "\x00" in text:
            raise PathRefused("a path cannot contain a NUL character")
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = self.root / candidate
        if not is_inside(candidate, self.root):
            raise PathRefused(f"'{text}' is outside the workspace ({self.root}); only paths inside it can be used")
        real = Path(os.path.realpath(candidate))
        if must_exist and not real.exists():
            raise PathRefused(f"'{text}' does not exist in the workspace")
        return real

    def is_inside(self, path: str | os.PathLike[str]) -> bool:
        """True if ``path`` (symlinks resolved) lies inside the workspace."""
        return is_inside(path, self.root)

    def check(self, path: str | os.PathLike[str]) -> Path:
        """An absolute path the app is about to read or serve, verified to lie inside the workspace."""
        if not is_inside(path, self.root):
            raise PathRefused(f"{path} is outside the workspace; refusing to read or serve it")
        return Path(os.path.realpath(path))

    def child(self, folder: str, name: str) -> Path:
        """``folder/name`` for a new output, where ``name`` is one plain file-name component."""
        name = (name or "").strip()
        if not _NAME.match(name) or name in (".", ".."):
            raise PathRefused(
                f"'{name}' is not a usable name: use letters (any script), digits, '.', '-' or '_' "
                "(at most 64, no slashes)"
            )
        return self.resolve(Path(folder) / name)

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the workspace, for display (absolute when it is not inside)."""
        try:
            return Path(os.path.realpath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def escaping_links(self, folder: Path) -> list[str]:
        """Symlinks under ``folder`` that point outside the workspace (or nowhere)."""
        bad = []
        for current, dirs, files in os.walk(folder, followlinks=False):
            for name in dirs + files:
                path = Path(current, name)
                if path.is_symlink() and not is_inside(path, self.root):
                    bad.append(self.rel(path.parent) + "/" + name)
        return bad

    def list(self, folder: str, pattern: str = "*", *, dirs: bool = False) -> list[str]:
        """Workspace-relative paths matching ``folder/pattern`` that resolve inside the workspace, sorted."""
        base = self.resolve(folder)
        found = []
        for path in sorted(base.glob(pattern)):
            if path.name.startswith(".") or not is_inside(path, self.root):
                continue
            if dirs and not path.is_dir():
                continue
            found.append(self.rel(path))
        return found

    # --- uploads ---------------------------------------------------------------------

    def store_upload(self, files: Iterable[str | os.PathLike[str]], upload_root: str | os.PathLike[str], dest: Path) -> UploadResult:
        """Copy uploaded images (and same-name ``.txt`` captions, and the images and captions
        inside ``.zip`` files) into ``dest``, checking each image like the data stage does:
        type, size, truncation and decompression bombs. Anything else is refused with its reason."""
        dest = self.check(dest)
        dest.mkdir(parents=True, exist_ok=True)
        result = UploadResult(dest)
        for file in files:
            path = Path(file)
            name = path.name
            if not is_inside(path, upload_root):
                result.refused.append({"file": name, "reason": "not an upload of this app"})
                continue
            suffix = path.suffix.lower()
            size = path.stat().st_size
            if suffix == ".zip":
                if size > MAX_ZIP_BYTES:
                    result.refused.append({"file": name, "reason": f"zip over {MAX_ZIP_BYTES >> 20} MiB"})
                    continue
                self._extract_zip(path, dest, result)
            elif suffix == ".txt":
                self._store_caption(path.read_bytes() if size <= MAX_TEXT_BYTES else None, name, dest, result)
            elif suffix in IMAGE_EXTENSIONS:
                if size > MAX_IMAGE_BYTES:
                    result.refused.append({"file": name, "reason": f"image over {MAX_IMAGE_BYTES >> 20} MiB"})
                    continue
                target = dest / _unique_name(dest, _safe_file_name(name))
                shutil.copyfile(path, target)
                self._keep_if_image(target, name, result, probe_image)
            else:
                result.refused.append({"file": name, "reason": f"not an image, .txt caption or .zip ({suffix or 'no extension'})"})
        return result

    def _keep_if_image(self, target: Path, shown: str, result: UploadResult, probe) -> bool:
        try:
            probe(target)
        except BadImageError as err:
            target.unlink()
            result.refused.append({"file": shown, "reason": str(err)})
            return False
        result.images += 1
        return True

    def _store_caption(self, data: bytes | None, shown: str, dest: Path, result: UploadResult,
                       target: str | None = None) -> None:
        if data is None:
            result.refused.append({"file": shown, "reason": f"caption over {MAX_TEXT_BYTES >> 10} KiB"})
            return
        try:
            data.decode("utf-8-sig")
        except UnicodeDecodeError:
            result.refused.append({"file": shown, "reason": "caption is not UTF-8 text"})
            return
        (dest / (target or _safe_file_name(Path(shown).name))).write_bytes(data)
        result.captions += 1

    def _extract_zip(self, archive: Path, dest: Path, result: UploadResult) -> None:
        """Images and ``.txt`` captions of a zip, flat in ``dest``; a picture keeps the caption of its
        own folder (``a/x.png`` + ``a/x.txt``), the pair renamed together when a name is taken."""
        try:
            handle = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as err:
            result.refused.append({"file": archive.name, "reason": f"not a readable zip ({err})"})
            return
        with handle:
            members = handle.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                result.refused.append({"file": archive.name, "reason": f"more than {MAX_ZIP_MEMBERS} entries"})
                return
            entries = [e for e in (_zip_entry(info, archive.name, result) for info in members) if e is not None]
            captions: dict[tuple[str, str], tuple[str, bytes | None]] = {}
            for info, folder, base, shown in entries:
                if Path(base).suffix.lower() == ".txt":
                    captions[(folder, Path(base).stem)] = (shown, _read_capped(handle, info, MAX_TEXT_BYTES))
            for info, folder, base, shown in entries:
                if Path(base).suffix.lower() == ".txt":
                    continue
                data = _read_capped(handle, info, MAX_IMAGE_BYTES)
                if data is None:
                    result.refused.append({"file": shown, "reason": "too large once unpacked (zip bomb?)"})
                    continue
                caption = captions.pop((folder, Path(base).stem), None)
                # Never next to a caption already there: that one belongs to another picture.
                target = dest / _unique_name(dest, _safe_file_name(base), paired=True)
                target.write_bytes(data)
                if self._keep_if_image(target, shown, result, probe_image) and caption is not None:
                    self._store_caption(caption[1], caption[0], dest, result, target.with_suffix(".txt").name)
            for (_folder, stem), (shown, data) in captions.items():  # captions with no picture of their own
                # Named apart from every picture, so that it cannot pair with a picture of another folder.
                self._store_caption(data, shown, dest, result, _unique_name(dest, _safe_file_name(stem + ".txt"), stem_free=True))


def _zip_entry(info: zipfile.ZipInfo, archive: str, result: UploadResult) -> tuple[zipfile.ZipInfo, str, str, str] | None:
    """(member, its folder, its base name, how it is shown) of a zip member worth reading, or None (refusals noted)."""
    shown = f"{archive}:{info.filename}"
    if info.is_dir():
        return None
    # Only the base name places a file: '../', absolute names and nested folders cannot; the folder only pairs captions.
    folder, _, base = info.filename.replace("\\", "/").rpartition("/")
    suffix = Path(base).suffix.lower()
    if not base or base.startswith(".") or base.startswith("__MACOSX") or folder.startswith("__MACOSX"):
        return None
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        result.refused.append({"file": shown, "reason": "symbolic link inside the zip"})
        return None
    if suffix not in IMAGE_EXTENSIONS and suffix != ".txt":
        result.refused.append({"file": shown, "reason": "not an image or .txt caption"})
        return None
    limit = MAX_TEXT_BYTES if suffix == ".txt" else MAX_IMAGE_BYTES
    if info.file_size > limit or info.file_size > max(info.compress_size, 1) * MAX_ZIP_RATIO + 65536:
        result.refused.append({"file": shown, "reason": "too large once unpacked (zip bomb?)"})
        return None
    return info, folder, base, shown


def _read_capped(handle: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    """A member's bytes, or None once more than ``limit`` come out (sizes in the header can lie)."""
    chunks, total = [], 0
    try:
        with handle.open(info) as member:
            while block := member.read(1 << 20):
                total += len(block)
                if total > limit:
                    return None
                chunks.append(block)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
        return None
    return b"".join(chunks)


def _safe_file_name(name: str) -> str:
    path = Path(name)
    return safe_stem(path.stem, limit=80) + path.suffix.lower()


def _unique_name(folder: Path, name: str, paired: bool = False, stem_free: bool = False) -> str:
    """``name``, or ``stem-N.suffix``, not yet in ``folder``; ``paired``: its ``.txt`` caption name is free too;
    ``stem_free``: no file of that stem (a picture) is there either."""
    stem, suffix = Path(name).stem, Path(name).suffix

    def taken(candidate: str) -> bool:
        path = folder / candidate
        if stem_free:
            return any(folder.glob(glob.escape(path.stem) + ".*"))
        return path.exists() or (paired and path.with_suffix(".txt").exists())

    candidate, number = name, 1
    while taken(candidate):
        number += 1
        candidate = f"{stem}-{number}{suffix}"
    return candidate
