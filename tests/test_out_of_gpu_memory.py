"""A GPU out of memory is no bug in lorastory: one line that says what lowers the command's memory, exit code 1.

torch's message is the one the 12 GB story met on an H200 capped at 12 GiB (issue 21, bench/mem12gb.py).
"""

from __future__ import annotations

import pytest
import torch

from lorastory.ui.jobs import FAILED, JobQueue

H200_AT_12_GIB = ("CUDA out of memory. Tried to allocate 1016.00 MiB. GPU 0 has a total capacity of 139.80 GiB of which "
                  "128.12 GiB is free. Including non-PyTorch memory, this process has 11.67 GiB memory in use. 12.00 GiB "
                  "allowed; Of the allocated memory 10.28 GiB is allocated by PyTorch, and 815.01 MiB is reserved by "
                  "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                  "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
NUMBERS = "(tried to allocate 1016 MiB with 11.67 GiB of 12 GiB in use)"


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError(H200_AT_12_GIB)


@pytest.fixture
def story_file(tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("panels:\n  - prompt: a cat\n", encoding="utf-8")
    return story


def test_generate_out_of_gpu_memory_is_one_line_with_what_is_left_to_try(cli, monkeypatch, story_file, tmp_path):
    import lorastory.cli.generate as generate_cli

    monkeypatch.setattr(generate_cli, "generate_story", _out_of_memory)
    result = cli("generate", story_file, "--model", tmp_path / "model", "--out", tmp_path / "run")
    assert result.code == 1
    assert result.err.strip() == (f"error: out of GPU memory {NUMBERS}; try --offload, --base-dtype fp8-weights or a "
                                  "smaller --batch-size")
    # The 12 GB preset's options are in already: only a smaller batch is left.
    result = cli("generate", story_file, "--model", tmp_path / "model", "--base-dtype", "fp8-weights", "--offload",
                 "--batch-size=2")
    assert result.code == 1
    assert result.err.strip() == f"error: out of GPU memory {NUMBERS}; try a smaller --batch-size"
    result = cli("generate", story_file, "--model", tmp_path / "model", "--base-dtype", "fp8", "--offload",
                 "--batch-size", "1")
    assert result.err.strip() == (f"error: out of GPU memory {NUMBERS}; try smaller batches or pictures, or close other "
                                  "programs using the GPU")
    with pytest.raises(torch.OutOfMemoryError):  # --debug: the traceback
        cli("--debug", "generate", story_file, "--model", tmp_path / "model")


def test_train_out_of_gpu_memory_names_the_training_levers(cli, monkeypatch, tiny_model_path, style_train_folder,
                                                            tmp_path):
    import lorastory.cli.train as train_cli

    monkeypatch.setattr(train_cli, "train", _out_of_memory)
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--batch-size", "8", "--gradient-checkpointing")
    assert result.code == 1 and "Traceback" not in result.err and "This is a bug" not in result.err
    assert result.err.strip() == (f"error: out of GPU memory {NUMBERS}; try --base-dtype fp8-weights, a smaller "
                                  "--batch-size or a smaller --resolution")


def test_a_web_job_out_of_gpu_memory_fails_with_the_same_line():
    queue = JobQueue()
    try:
        job = queue.submit("story", "story my-story", _out_of_memory)
        queue.wait(job.id, timeout=10)
    finally:
        queue.shutdown(timeout=5)
    assert job.status == FAILED and not job.log  # no traceback: not a bug
    assert job.error == (f"out of GPU memory {NUMBERS}; try --offload, --base-dtype fp8-weights or a smaller "
                         "--batch-size")
