"""The ``lorastory`` entry point: run the app, and turn every failure into one line and an exit code.

Errors a user can fix are :class:`LorastoryError`: one red line and exit code 1
(``--debug`` shows the traceback). Usage errors exit 2. A failure of the machine
(a file system, memory) is one line too; anything else asks for a bug report.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import sys

from rich.markup import escape

# The command modules register their commands on the apps when imported.
from lorastory.cli import apps, data, evaluate, generate, models, train  # noqa: F401
from lorastory.cli.common import Options, app, err_console
from lorastory.errors import LorastoryError, first_line, gpu_memory_message, is_out_of_gpu_memory
from lorastory.fileio import display_path, display_text


def _quiet_libraries(argv: list[str]) -> None:
    """Keep the model libraries' info logs and progress bars out of our output (not with --debug)."""
    if "--debug" in argv:
        return
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # diffusers imports torchao whenever it is installed (the fp8 extra), and torchao then logs each optional
    # kernel library this machine cannot load and each enum it registers with torch's pytree: lines on every
    # command, fp8 or not. Their errors still show.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map errors to exit codes (1 user error, 2 usage).

    Called without ``argv`` (the ``lorastory`` command, ``python -m lorastory``) the process ends
    when it returns, and the objects it made are left to the operating system (:func:`_end_quickly`).
    """
    if argv is None:
        try:
            return _run(None)
        finally:
            _end_quickly()
    return _run(argv)


def _end_quickly() -> None:
    """Spare the process's end the garbage collector's passes over everything still loaded.

    With torch, diffusers and transformers imported, the collections the interpreter runs as it shuts
    down walk millions of objects: about a second after a CPU story, more after a GPU one, with nothing
    to show for it (the memory goes back to the system anyway). Frozen objects are skipped by those
    passes; files, atexit handlers and reference counting work as before.
    """
    gc.freeze()


def _run(argv: list[str] | None) -> int:
    options = Options()
    words = sys.argv[1:] if argv is None else argv
    _quiet_libraries(words)
    try:
        # Standalone mode: typer reports usage errors itself (exit 2) and ends with SystemExit.
        app(args=argv, prog_name="lorastory", obj=options)
    except SystemExit as done:
        # Typer maps Ctrl-C to exit code 130 itself; nothing half-written is left (atomic writes).
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except LorastoryError as err:
        if options.debug:
            raise
        _print_error(str(err))
        return 1
    except Exception as err:  # noqa: BLE001  the boundary: expected failures become one line, bugs ask for a report
        if options.debug:
            raise
        expected = _expected_failure(err, words)
        if expected is not None:
            _print_error(expected)
            return 1
        _print_error(f"unexpected {type(err).__name__}: {first_line(err, 300)}")
        err_console.print("This is a bug in lorastory: please report it with the output of the same command "
                          "run with --debug (lorastory --debug ...).", highlight=False, markup=False)
        return 1
    return 0


def _print_error(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(display_text(message))}", highlight=False, soft_wrap=True)


def _expected_failure(err: Exception, words: list[str]) -> str | None:
    """The one line for a failure of the machine rather than of lorastory: a file system, memory (the GPU's
    with advice for the command in ``words``, the command line) or a link."""
    if is_out_of_gpu_memory(err):
        return gpu_memory_message(err, *_command_and_options(words))
    if isinstance(err, OSError) and err.errno is not None:
        where = err.filename if err.filename is not None else None
        what = err.strerror or first_line(err, 300)
        if where is not None:
            hint = _OS_HINTS.get(err.errno, "")
            return f"{display_path(where)}: {what}{hint}"
        return what
    if isinstance(err, MemoryError):
        return "out of memory: use smaller sizes or batches"
    if isinstance(err, RecursionError):
        return "input nested too deeply to read"
    return None


def _command_and_options(words: list[str]) -> tuple[str | None, dict[str, str]]:
    """The command (the first word that is no option) and the options given: flag -> the word after it ("" if none)."""
    command = next((word for word in words if not word.startswith("-")), None)
    given = {}
    for at, word in enumerate(words):
        if word.startswith("--"):
            flag, _, value = word.partition("=")
            following = words[at + 1] if at + 1 < len(words) else ""
            given[flag] = value or ("" if following.startswith("-") else following)
    return command, given


_OS_HINTS = {
    errno.EACCES: " (check the permissions, or choose another output)",
    errno.EPERM: " (check the permissions, or choose another output)",
    errno.EROFS: " (a read-only file system: choose another output)",
    errno.ENOSPC: " (the disk is full: free space or choose another output)",
    errno.EISDIR: " (a folder where a file is expected)",
    errno.ENOTDIR: " (a file where a folder is expected)",
    errno.EEXIST: " (already exists)",
}


if __name__ == "__main__":
    sys.exit(main())
