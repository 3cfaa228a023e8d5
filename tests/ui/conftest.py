"""Fixtures for the web app: a workspace with images and a tiny model, the app in a subprocess, Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LORASTORY_CHROMIUM", "/usr/bin/chromium")
SERVER_LOGS: dict[str, Path] = {}  # base URL -> the app's log, for failure messages

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium fonts-noto-cjk; `make test` does it as root)"
    return None


def write_images(folder: Path, sizes: list[tuple[int, int]], captions: list[str]) -> None:
    """Striped PNGs of the given sizes with same-name .txt captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, ((width, height), caption) in enumerate(zip(sizes, captions)):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        pixels[::6, :, 0] = 250
        Image.fromarray(pixels).save(folder / f"img{index:02d}.png")
        (folder / f"img{index:02d}.txt").write_text(caption, encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's; Playwright's own download cannot work offline)."""
    problem = _missing_browser()
    if problem:
        if os.environ.get("LORASTORY_REQUIRE_BROWSER") or os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui_workspace(tmp_path_factory, toy_model_path):
    """A workspace with the toy Kolors as its default model, a folder of images, and a secret outside it."""
    root = tmp_path_factory.mktemp("ui")
    ws = root / "workspace"
    (ws / "models").mkdir(parents=True)
    shutil.copytree(toy_model_path("kolors"), ws / "models" / "toy-kolors")
    shutil.copytree(toy_model_path("clip"), ws / "models" / "toy-clip")
    sizes = [(96, 80), (96, 80), (80, 96), (96, 96), (32, 32), (40, 24)]
    write_images(ws / "incoming", sizes, ["二次元 少女", "二次元 城市", "风景", "猫", "tiny one", "tiny two"])
    (root / "secret").mkdir()
    (root / "secret" / "passwords.txt").write_text("top secret", encoding="utf-8")
    (ws / "escape").symlink_to(root / "secret")
    return ws


@contextlib.contextmanager
def serve_app(workspace: Path):
    """``lorastory ui`` over ``workspace`` in a subprocess on a free port; yields its base URL."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", LORASTORY_UI_AUTH="")
    log_path = workspace.parent / f"server-{workspace.name}.log"
    log = open(log_path, "w", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "lorastory", "ui", "--workspace", str(workspace), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    SERVER_LOGS[url] = log_path
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                pytest.fail("the app did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def serve():
    """:func:`serve_app`, for a module that serves its own workspace."""
    return serve_app


@pytest.fixture(scope="module")
def ui_server(ui_workspace):
    """``lorastory ui`` in a subprocess on a free port; yields its base URL."""
    with serve_app(ui_workspace) as url:
        yield url


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: $LORASTORY_UI_SCREENSHOTS if set (e.g. docs/), else a temp folder."""
    folder = Path(os.environ.get("LORASTORY_UI_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (the browser tests screenshot failures)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def wait_text():
    """Wait until an element's text includes ``text``; on timeout, fail with what it shows and the app's log tail.

    A bare Playwright timeout says only what was awaited; in CI that leaves no trace of why (an error in the
    status, a job still queued, a crash in the server).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def wait(page, elem_id: str, text: str, timeout: int = 60_000) -> None:
        try:
            page.wait_for_function("([id, t]) => (document.getElementById(id)?.innerText || '').includes(t)",
                                   arg=[elem_id, text], timeout=timeout)
        except PlaywrightTimeout:
            shown = page.evaluate("id => document.getElementById(id)?.innerText ?? '(no such element)'", elem_id)
            parts = urllib.parse.urlsplit(page.url)
            log = SERVER_LOGS.get(f"{parts.scheme}://{parts.netloc}")
            tail = log.read_text(encoding="utf-8", errors="replace")[-4000:] if log and log.is_file() else "(no log)"
            pytest.fail(f"#{elem_id} did not show {text!r} within {timeout / 1000:.0f} s; it shows:\n{shown}\n"
                        f"--- app log (tail) ---\n{tail}", pytrace=False)

    return wait


@pytest.fixture
def blocked():
    """``blocked(queue)`` keeps a job queue's worker busy until the event it returns is set (later jobs stay queued)."""
    import threading

    def block(queue) -> threading.Event:
        release = threading.Event()
        queue.submit("other", "blocker", lambda ctx: release.wait(60))
        return release

    return block
