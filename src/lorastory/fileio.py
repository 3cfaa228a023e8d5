"""Atomic file writes: a reader never sees a half-written file.

Everything is written to a temporary file in the destination folder and
renamed over the target once complete, so Ctrl-C or a crash leaves either the
old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lorastory.errors import DataError, OutputError

# Temporary names carry the writer's pid so a later run can tell a dead run's leftovers
# (removed) from a live run's work in progress (kept): ".NAME.PID.RANDOM.tmp", ".NAME.old-PID-NS".
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\.[^.]+\.tmp|old-(?P<old_pid>\d+)-\d+)$")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """What ``open()`` would give a new file: 0o666 minus the process umask."""
    return 0o666 & ~_umask()


def _default_dir_mode() -> int:
    """What ``mkdir()`` would give a new folder: 0o777 minus the process umask."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; readers expect a normal file
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON (Chinese stays readable) atomically.

    NaN and infinities become ``null``: the file stays valid JSON for every reader.
    Text that cannot be UTF-8 (undecodable file-name bytes) is written escaped.
    """
    atomic_write_text(path, json.dumps(json_safe(obj), ensure_ascii=False, indent=2) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and unencodable strings escaped (see :func:`display_text`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return display_text(obj)
    if isinstance(obj, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically."""
    with open(src, "rb") as reader, atomic_open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds.

    An existing ``path`` is kept until the new folder is complete, then swapped
    out; on failure the temporary folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(tmp, _default_dir_mode())  # mkdtemp makes 0700; readers expect a normal folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def replace_dir(complete: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the finished folder ``complete`` at ``target``; an old ``target`` is removed only after."""
    final = Path(target)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(complete, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temporary files and folders that a killed run left in ``folder``.

    Only our own temp names are touched (see ``_TEMP_NAME``), only those of
    processes that no longer run, and with ``name`` only those for that target.
    Returns what was removed.
    """
    root = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if pid_alive(int(match["pid"] or match["old_pid"])):
            continue
        path = Path(entry.path)
        if match["old_pid"] and not (root / match["name"]).exists():
            # Killed between moving the old output aside and moving the new one in: put the old one back.
            with contextlib.suppress(OSError):
                os.replace(path, root / match["name"])
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed


def _journal(first: Path) -> Path:
    return first.with_name(f".{first.name}.commit")


@contextlib.contextmanager
def atomic_files(targets: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield a temporary path for each target; on success all of them replace their targets together.

    A journal lists the renames before the first one is made, so a run killed
    between two renames is completed by :func:`finish_commit` on the next run:
    readers never see the new result with the old stats or report.
    """
    paths = [Path(t) for t in targets]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    finish_commit(paths[0])
    temps: list[Path] = []
    try:
        for path in paths:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp in temps:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, _default_mode())
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    journal = _journal(paths[0])
    atomic_write_json(journal, [[str(tmp), str(path)] for tmp, path in zip(temps, paths)])
    finish_commit(paths[0])


def finish_commit(first_target: str | os.PathLike[str]) -> None:
    """Complete an :func:`atomic_files` commit that was interrupted between its renames."""
    journal = _journal(Path(first_target))
    if not journal.is_file():
        return
    try:
        pairs = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pairs = []
    for tmp, target in pairs if isinstance(pairs, list) else []:
        if os.path.exists(tmp):
            os.replace(tmp, target)
    journal.unlink()


def real_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path with every symlink resolved (the parts that exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def lies_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True if ``path``, with symlinks resolved, is ``root`` or lies under it."""
    return _is_within(real_path(path), real_path(root))


def check_outputs_apart(
    outputs: Iterable[tuple[str, str | os.PathLike[str]]],
    inputs: Iterable[tuple[str, str | os.PathLike[str]]],
) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs.

    Paths are compared after resolving symlinks (and by inode where both exist),
    so ``--out`` reaching an input through a link or another spelling is caught.
    Each pair is ``(what it is, path)``, e.g. ``("--out", out)``.
    """
    outs = [(label, Path(p), real_path(p)) for label, p in outputs]
    for in_label, given in inputs:
        inner = real_path(given)
        for out_label, out, resolved in outs:
            if _is_within(inner, resolved) or _same_file(out, given):
                how = "is" if inner == resolved or _same_file(out, given) else "contains"
                raise OutputError(
                    f"{out_label} {display_path(out)} {how} the input {in_label} {display_path(given)}; "
                    "writing there could replace or delete it: choose another output"
                )
            if _is_within(resolved, inner):
                raise OutputError(
                    f"{out_label} {display_path(out)} lies inside the input {in_label} {display_path(given)}; "
                    "choose an output outside it"
                )


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as text that can always be printed and written as UTF-8 (undecodable bytes escaped)."""
    return display_text(os.fspath(path))


def display_text(text: str) -> str:
    """``text`` with lone surrogates (undecodable file-name bytes) shown as ``\\xNN``/``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else None
        if raw is not None:
            return raw.decode("utf-8", "backslashreplace")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
    """True if every surrogate in ``text`` is one Python made from an undecodable byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def is_valid_text(text: str) -> bool:
    """True if ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(raw: str | bytes, source: str) -> Any:
    """Parse JSON text; too deep nesting or invalid text become a one-line :class:`DataError`."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise DataError(f"{source}: JSON nested too deeply") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise DataError(f"{source}: invalid JSON ({err})") from None


def check_output_folder(out: str | os.PathLike[str], overwrite: bool, option: str = "--out",
                        marker: str | None = None) -> None:
    """Refuse a folder output that is a file or a broken link, or a non-empty folder unless ``overwrite``
    is given or it holds ``marker`` (a file only our own earlier output of this kind has)."""
    folder = Path(out)
    if not folder.exists():
        if folder.is_symlink():
            raise OutputError(f"{option} {display_path(folder)} is a broken link; remove it or choose another folder")
        return
    if not folder.is_dir():
        raise OutputError(f"{option} {display_path(folder)} exists and is not a folder; choose a new {option}")
    ours = marker is not None and (folder / marker).is_file()
    if any(folder.iterdir()) and not overwrite and not ours:
        raise OutputError(
            f"{option} {display_path(folder)} is not empty; choose a new {option} folder or pass --overwrite to replace it"
        )


def open_regular_file(path: str | os.PathLike[str]) -> tuple[IO[bytes], int]:
    """Open a regular file for reading and return it with its size, never blocking.

    FIFOs, devices and folders are refused before they are opened, and the open is
    non-blocking should the path be swapped for a FIFO in between. Problems are a
    :class:`DataError` whose message is the reason alone (callers say which file).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError("file not found") from None
    except ValueError:  # an embedded NUL byte
        raise DataError("the path contains a NUL byte") from None
    except OSError as err:
        raise DataError(f"cannot read file ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a pipe, device or socket"
        raise DataError(f"not a regular file ({kind})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise DataError(f"cannot read file ({err.strerror})") from None
    handle = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise DataError("not a regular file")
    return handle, info.st_size
