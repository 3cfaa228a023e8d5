"""A GPU run loads the frozen base in the dtype it trains in, not as an fp32 copy on the CPU first."""

from __future__ import annotations

import torch

from lorastory.models.registry import load_pipeline
from lorastory.train.model_setup import load_dtypes


def test_a_gpu_run_loads_the_base_in_its_frozen_dtype_and_the_vae_in_fp32(tiny_model_path):
    assert load_dtypes("no", torch.device("cuda")) is None  # fp32 training
    assert load_dtypes("bf16", torch.device("cpu")) is None
    folder = tiny_model_path("kolors")
    pipe = load_pipeline(folder, dtype=load_dtypes("bf16", torch.device("cuda")))
    assert (pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    # The same weights as the fp32 load cast afterwards (what the run did before).
    full = load_pipeline(folder)
    for name in ("unet", "text_encoder", "vae"):
        want = {k: v.to(getattr(pipe, name).dtype) for k, v in getattr(full, name).state_dict().items()}
        got = getattr(pipe, name).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
