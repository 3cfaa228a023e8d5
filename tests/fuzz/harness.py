"""Run one fuzz case in-process and check every promise an entry point makes (issue 15).

:func:`run_case` builds the case in a fresh folder, snapshots that folder (type, size and
sha256 of every entry), calls ``lorastory.cli.main`` with the case's arguments and the
current folder set to the case folder, under a SIGALRM time limit, with stdout and stderr
captured, and returns an :class:`Outcome` listing what went wrong:

- ``traceback``: the output holds a Python traceback or the "This is a bug" line, or main raised;
- ``hang``: the time limit passed (the address space is capped too, so a huge allocation fails fast);
- ``exit``: an exit code other than 0 or 1, or not the one the case requires;
- ``data_lost``: an entry outside the allowed outputs created, changed or deleted (inputs are
  outside the outputs, so an input not byte-identical lands here), a protected file touched,
  or an existing output file changed by a run that failed;
- ``wrong_output``: a data stage that exited 0 dropped a good row or left a bad row out of
  its report, or an extra check of the case failed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus import Case, Spec

BUG_LINE = "This is a bug in lorastory"


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past its limit (a BaseException: no ``except Exception`` eats it)."""


@dataclass
class Outcome:
    case: Case
    code: int | None = None
    seconds: float = 0.0
    output: str = ""
    traceback: list[str] = field(default_factory=list)
    hang: bool = False
    exit_problems: list[str] = field(default_factory=list)
    data_lost: list[str] = field(default_factory=list)
    wrong_output: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        found = [f"traceback: {t}" for t in self.traceback]
        if self.hang:
            found.append(f"hang: still running after {self.case.timeout:.0f} s")
        found += [f"exit: {p}" for p in self.exit_problems]
        found += [f"data lost: {p}" for p in self.data_lost]
        found += [f"wrong output: {p}" for p in self.wrong_output]
        return found

    def describe(self) -> str:
        lines = [f"{self.case.id} [{self.case.family}] exit {self.code} in {self.seconds:.1f} s"]
        lines += [f"  - {f}" for f in self.failures]
        tail = self.output.strip().splitlines()[-12:]
        lines += ["  output (last lines):"] + [f"    | {line[:300]}" for line in tail]
        return "\n".join(lines)


# --- snapshots -------------------------------------------------------------------------------

Entry = tuple[str, Any, Any]


def snapshot(root: Path) -> dict[bytes, Entry]:
    """Every entry under ``root`` (bytes path relative to it) -> (kind, size or link target, sha256)."""
    found: dict[bytes, Entry] = {}
    base = os.fsencode(root)
    for folder, dirs, files in os.walk(base, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, base)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path), None)
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", None, None)
            elif stat.S_ISREG(info.st_mode):
                found[rel] = ("file", info.st_size, _sha256(path))
            else:
                found[rel] = ("special", stat.S_IFMT(info.st_mode), None)
    return found


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as err:
        return f"unreadable: {err.strerror}"
    return digest.hexdigest()


def _under(rel: bytes, prefixes: list[str]) -> bool:
    text = os.fsdecode(rel)
    for prefix in prefixes:
        prefix = prefix.rstrip("/")
        if text == prefix or text.startswith(prefix + "/") or (prefix.endswith(".") and text.startswith(prefix)):
            return True
    return False


def compare(before: dict[bytes, Entry], after: dict[bytes, Entry], spec: Spec, code: int | None) -> list[str]:
    """What changed where it must not."""
    problems = []
    for rel in sorted(set(before) | set(after)):
        old, new = before.get(rel), after.get(rel)
        if old == new or (old is not None and new is not None and old[0] == new[0] == "dir"):
            continue
        name = os.fsdecode(rel)
        what = "created" if old is None else "deleted" if new is None else "changed"
        if _under(rel, spec.protect):
            problems.append(f"{name} {what} (a user's file in the output folder)")
        elif not _under(rel, spec.outputs):
            problems.append(f"{name} {what} (outside the outputs {spec.outputs or '(none)'})")
        elif code != 0 and old is not None and old[0] != "dir" and not _under(rel, spec.volatile):
            problems.append(f"{name} {what} by a run that failed (the previous result must survive)")
    return problems


# --- data checks -----------------------------------------------------------------------------


_LINE_RANGE = re.compile(r"\blines (\d+)-(\d+)\b")


def _has_marker(texts: list[str], marker: str) -> bool:
    """``marker`` ("line 4", a caption...) in a report entry; "lines 4-6" covers lines 4, 5 and 6."""
    pattern = re.compile(re.escape(marker) + (r"\b" if marker[-1:].isalnum() else ""))
    line = re.fullmatch(r"line (\d+)", marker)
    for text in texts:
        if pattern.search(text):
            return True
        if line and any(int(a) <= int(line[1]) <= int(b) for a, b in _LINE_RANGE.findall(text)):
            return True
    return False


def _report_texts(root: Path, spec: Spec) -> tuple[list[str], list[str]]:
    """(captions in the output, entries of the report's skipped/dropped lists)."""
    out = root / spec.data_out
    if spec.stage == "import":
        captions = [json.loads(line).get("text", "") for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
                    if line.strip()]
        report = json.loads((out / "import_report.json").read_text(encoding="utf-8"))
        skipped = [f"{i.get('item')}: {i.get('reason')}" for i in report.get("skipped_items", [])]
    elif spec.stage == "export":
        with open(out / "metadata.csv", encoding="utf-8", newline="") as handle:
            captions = [row.get("text", "") for row in csv.DictReader(handle)]
        report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
        skipped = [f"{i.get('item')}: {i.get('reason')}" for i in report.get("skipped_items", [])]
    elif spec.stage == "run":
        captions = [json.loads(line).get("text", "") for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
        report = json.loads(Path(f"{out.with_suffix('')}_report.json").read_text(encoding="utf-8"))
        skipped = [f"line {r.get('line')}: {r.get('stage')}: {r.get('reason')}" for r in report.get("skipped_rows", [])]
        skipped += [f"line {r.get('line')}: {r.get('op')}: {r.get('why')}" for r in report.get("dropped_examples", [])]
    else:
        raise ValueError(spec.stage)
    return captions, skipped


def check_rows(root: Path, spec: Spec) -> list[str]:
    """A data stage that exited 0 kept every good row and reported every bad one."""
    try:
        captions, skipped = _report_texts(root, spec)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        return [f"output or report of the {spec.stage} unreadable: {type(err).__name__}: {str(err)[:200]}"]
    problems = [f"good row lost: {c[:60]!r}" for c in spec.good if c not in captions]
    problems += [f"bad row not in the report: {m}" for m in spec.bad if not _has_marker(skipped, m)]
    problems += [f"row neither kept nor reported: {m} ({c[:40]!r})" for c, m in spec.either
                 if c not in captions and not _has_marker(skipped, m)]
    return problems


# --- running -----------------------------------------------------------------------------------


def _alarm(_signum: int, _frame: Any) -> None:
    raise CaseTimeout()


BACKSTOP_S = 60.0
"""If SIGALRM cannot interrupt a case (a C call that retries its blocked system call), the process
dumps every thread's stack and exits this much later instead of hanging the whole suite."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    import faulthandler

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + BACKSTOP_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


MEMORY_HEADROOM = 3 << 30
"""Address space a case may add to what the process already maps: an input that makes a command try to
allocate tens of GB then fails (MemoryError) instead of taking the machine down with it."""


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def _memory_limit(headroom: int = MEMORY_HEADROOM):
    import resource

    mapped = _mapped_bytes()
    if not mapped:
        yield
        return
    previous = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom
    if previous[1] != resource.RLIM_INFINITY:
        limit = min(limit, previous[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


@contextlib.contextmanager
def _in_folder(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def run_case(case: Case, resources: Any, base: Path) -> Outcome:
    """Build ``case`` in ``base/<id>``, run it in-process, check it."""
    from lorastory.cli import main

    root = base / re.sub(r"[^\w.-]+", "_", case.id)
    if root.exists():
        _remove(root)
    root.mkdir(parents=True)
    outcome = Outcome(case)
    spec = case.build(root, resources)
    before = snapshot(root)
    stdout, stderr = io.StringIO(), io.StringIO()
    environment = dict(os.environ)
    os.environ.update(COLUMNS="200", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    try:
        with _in_folder(root), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                _memory_limit(), _time_limit(case.timeout):
            outcome.code = main(list(spec.args))
    except CaseTimeout:
        outcome.hang = True
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001  main must never raise without --debug
        import traceback

        outcome.traceback.append(f"main raised {type(err).__name__}: {str(err)[:200]}")
        stderr.write("".join(traceback.format_exception(err)))
    finally:
        os.environ.clear()
        os.environ.update(environment)
    outcome.seconds = time.perf_counter() - started
    outcome.output = stdout.getvalue() + stderr.getvalue()
    if _TRACEBACK.search(outcome.output):
        outcome.traceback.append("a Python traceback in the output")
    if BUG_LINE in outcome.output:
        line = next((l for l in outcome.output.splitlines() if "unexpected" in l), BUG_LINE)
        outcome.traceback.append(line.strip()[:300])
    if not outcome.hang and outcome.code is not None:
        if outcome.code not in (0, 1):
            outcome.exit_problems.append(f"exit code {outcome.code} (only 0 or 1 allowed)")
        elif spec.expect == "ok" and outcome.code != 0:
            outcome.exit_problems.append("exit 1 where the bad rows should only be skipped (every good row of the run lost)"
                                         if spec.stage or case.entry.startswith("data-")
                                         else "exit 1 where the command must recover (skip or fall back) and succeed")
        elif spec.expect == "error" and outcome.code != 1:
            outcome.exit_problems.append("exit 0 where the input must be refused")
    outcome.data_lost = compare(before, snapshot(root), spec, outcome.code)
    if outcome.code == 0 and spec.stage is not None:
        outcome.wrong_output += check_rows(root, spec)
    for check in spec.checks:
        try:
            outcome.wrong_output += check(root, outcome.code if outcome.code is not None else -1, outcome.output)
        except Exception as err:  # noqa: BLE001  a check that cannot read what was written reports it
            outcome.wrong_output.append(f"check {getattr(check, '__qualname__', check)} failed: {type(err).__name__}: {err}")
    _remove(root)
    return outcome


def _remove(root: Path) -> None:
    def retry(function: Any, path: Any, _info: Any) -> None:
        try:
            os.chmod(os.path.dirname(path), 0o755)
            function(path)
        except OSError:
            pass

    for folder, dirs, _files in os.walk(root):
        for name in dirs:
            try:
                os.chmod(os.path.join(folder, name), 0o755)
            except OSError:
                pass
    shutil.rmtree(root, onerror=retry)


# --- shared resources ----------------------------------------------------------------------------


class SessionResources:
    """Tiny models, a story run and a trained run with checkpoints, built on first use under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self._built: dict[str, Path] = {}

    def _once(self, key: str, make: Any) -> Path:
        if key not in self._built:
            self._built[key] = make()
        return self._built[key]

    def model(self, family: str) -> Path:
        from lorastory.models.tiny import build_tiny_model

        return self._once(f"model-{family}", lambda: Path(build_tiny_model(family, self.base / f"tiny-{family}")))

    def clip(self) -> Path:
        return self.model("clip")

    def train_data(self) -> Path:
        def make() -> Path:
            import badfiles

            folder = self.base / "train-data"
            rows = ["file_name,text"]
            for index in range(4):
                (folder / "images").mkdir(parents=True, exist_ok=True)
                (folder / "images" / f"{index:02d}.png").write_bytes(badfiles.good_png(100 + index, (64, 64)))
                rows.append(f"images/{index:02d}.png,striped style {index}")
            (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
            return folder

        return self._once("train-data", make)

    def _cli(self, args: list[str]) -> None:
        from lorastory.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        if code != 0:
            raise RuntimeError(f"building a fuzz resource failed: lorastory {' '.join(args)}\n{out.getvalue()}{err.getvalue()}")

    def trained(self) -> Path:
        from corpus import TRAIN_FAMILY, train_args

        def make() -> Path:
            out = self.base / "trained"
            self._cli(train_args(self.model(TRAIN_FAMILY), self.train_data(), out, max_steps=3)
                      + ["--checkpoint-every", "1"])
            return out

        return self._once("trained", make)

    def lora(self) -> Path:
        return self._once("lora", lambda: self.trained() / "lora.safetensors")

    def run(self) -> Path:
        from corpus import GEN_FAMILY, story_text

        def make() -> Path:
            story = self.base / "story.yaml"
            story.write_text(story_text(), encoding="utf-8")
            out = self.base / "story-run"
            self._cli(["generate", str(story), "--model", str(self.model(GEN_FAMILY)), "--out", str(out)])
            return out

        return self._once("run", make)
