"""Shared test helpers: run the CLI in-process, skip GPU tests without CUDA."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest


BUG_LINE = "This is a bug in lorastory"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def error_line(self, *needles: str) -> str:
        """The one error line of a refused call: exit 1, no traceback, no bug report, every needle in it."""
        assert self.code == 1, (self.out, self.err)
        assert "Traceback" not in self.err and BUG_LINE not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), self.err
        for needle in needles:
            assert needle in self.err, (needle, self.err)
        return lines[0]


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call ``lorastory`` with a list of arguments; return exit code and captured output."""
    monkeypatch.setenv("COLUMNS", "200")
    from lorastory.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Build each tiny family at most once per session; return a function family -> folder."""
    built: dict[str, object] = {}

    def get(family: str = "kolors"):
        if family not in built:
            from lorastory.models.tiny import build_tiny_model

            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}") / "model")
        return built[family]

    return get


@pytest.fixture(scope="session")
def style_train_folder(tmp_path_factory):
    """Eight captioned 96x80 images in a training folder (metadata.csv), like export-csv writes."""
    import csv

    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("train-data")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(8):
        stripes = np.zeros((80, 96, 3), dtype=np.uint8)
        stripes[:, :, 0] = 200
        stripes[::8, :, 2] = 255
        noise = rng.integers(0, 40, stripes.shape, dtype=np.uint8)
        Image.fromarray(stripes + noise).save(folder / "images" / f"{index:02d}.png")
        rows.append((f"images/{index:02d}.png", "二次元 striped style" if index % 2 else "striped style 条纹"))
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def toy_model_path(tmp_path_factory):
    """The shipped toy model written out once per session: component ("kolors" or "clip") -> folder."""
    written: dict[str, object] = {}

    def get(component: str = "kolors"):
        if component not in written:
            from lorastory.models.toy import write_toy_model

            written[component] = write_toy_model(tmp_path_factory.mktemp(f"toy-{component}") / "model", component)
        return written[component]

    return get


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_path) -> Path:
    """A tiny random CLIP folder (real CLIP tokenizer), built once per session."""
    return Path(tiny_model_path("clip"))


@pytest.fixture(scope="session")
def tiny_chinese_clip(tiny_model_path) -> Path:
    return Path(tiny_model_path("chinese-clip"))


@pytest.fixture
def no_hang():
    """A test that blocks (a FIFO opened for reading) fails after 60 s instead of hanging the suite."""

    def stop(signum, frame):
        raise TimeoutError("blocked: a FIFO was opened for reading?")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every Ray test of the session.

    Started once: a Ray re-initialised in the same process after ``ray.shutdown()`` can
    lose its raylet on a slow machine, and Ray then ends the driver (pytest) with exit 1.
    ``address="local"`` never joins a cluster another process started on this machine.
    """
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lorastory[ray]' to run these")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def bf16_unet_with_lora(tiny_model_path):
    """The tiny Kolors UNet frozen in bf16 with a rank-4 LoRA in fp32 (its B nonzero, so it changes the output):
    ``(unet, lora_params)``, fresh for each test."""
    import torch

    from lorastory.models.lora import LoraSpec, inject_lora
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path("kolors"))
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.to(torch.bfloat16)
    torch.manual_seed(0)
    params = inject_lora(pipe, LoraSpec(rank=4, alpha=4))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    for param in params:
        param.data = param.data.float()
    return unet, params
