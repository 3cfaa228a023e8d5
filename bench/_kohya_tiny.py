"""Run kohya's ``flux_train_network.py`` on lorastory's tiny random Flux: the CPU smoke test of ``flux_peers.py``.

kohya's Flux loaders build the published widths (a 3072-wide transformer, T5-XXL, CLIP-L, the 128-channel AE)
and take only the block counts from the file, so a tiny model needs these widths changed. For the smoke test
only (``flux_peers.py --tiny``; the GPU rows run kohya unchanged), before the script starts this wrapper:

- sets kohya's ``dev`` Flux and AE parameters from the tiny folder's ``transformer/`` and ``vae/`` configs, with
  8 normalisation groups in the AE (BFL's 32 do not divide the tiny VAE's 8 channels);
- builds CLIP and T5 from the config next to the file kohya is given, then loads that file as
  ``flux_utils.load_clip_l`` / ``load_t5xxl`` do with the published configs (empty weights, ``assign``: a
  weight the file does not name stays on "meta" and fails when it is moved, as it would in kohya);
- stands in a three-function ``torchvision.transforms`` where torchvision does not import (a CPU-only torch
  without torchvision): kohya imports it for ``ToTensor`` and ``Normalize`` only.

    python bench/_kohya_tiny.py SD_SCRIPTS/flux_train_network.py ARGS...
"""

from __future__ import annotations

import dataclasses
import functools
import json
import runpy
import sys
import types
from pathlib import Path
from typing import Any


def _option(name: str) -> Path:
    return Path(sys.argv[sys.argv.index(name) + 1])


def _stand_in_torchvision() -> None:
    try:
        import torchvision.transforms  # noqa: F401
        return
    except Exception:  # noqa: BLE001 - any failure (missing, or built for another torch): the stand-in
        pass
    import numpy as np
    import torch

    class Compose:
        def __init__(self, steps: list[Any]) -> None:
            self.steps = steps

        def __call__(self, x: Any) -> Any:
            for step in self.steps:
                x = step(x)
            return x

    class ToTensor:
        def __call__(self, picture: Any) -> Any:
            return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    class Normalize:
        def __init__(self, mean: list[float], std: list[float]) -> None:
            self.mean, self.std = mean[0], std[0]

        def __call__(self, x: Any) -> Any:
            return (x - self.mean) / self.std

    from importlib.machinery import ModuleSpec

    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose, transforms.ToTensor, transforms.Normalize = Compose, ToTensor, Normalize
    transforms.functional = types.SimpleNamespace(pil_to_tensor=lambda p: torch.from_numpy(np.asarray(p)).permute(2, 0, 1))
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    package.__spec__, transforms.__spec__ = ModuleSpec("torchvision", None), ModuleSpec("torchvision.transforms", None)
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms})


def _from_config(kind: str, ckpt_path: str, dtype: Any, device: Any, disable_mmap: bool = False,
                 state_dict: dict | None = None) -> Any:
    """kohya's ``load_clip_l`` / ``load_t5xxl`` with the config next to the file instead of the published one."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config = json.loads((Path(ckpt_path).parent / "config.json").read_text())
    with init_empty_weights():  # as kohya: a weight the file lacks stays on "meta" and fails when it is moved
        model = CLIPTextModel(CLIPTextConfig(**config)) if kind == "clip" else T5EncoderModel(T5Config(**config))
    sd = state_dict if state_dict is not None else load_file(ckpt_path)
    model.load_state_dict({k: v.to(dtype) if dtype is not None else v for k, v in sd.items()}, strict=False, assign=True)
    return model


def patch_kohya() -> None:
    """The tiny widths (module docstring); needs sd-scripts on ``sys.path``."""
    import torch
    from library import flux_models, flux_utils

    flux = json.loads((_option("--pretrained_model_name_or_path").parent / "config.json").read_text())
    vae = json.loads((_option("--ae").parent / "vae" / "config.json").read_text())
    spec = flux_models.configs["dev"]
    params = dataclasses.replace(spec.params, vec_in_dim=flux["pooled_projection_dim"],
                                 context_in_dim=flux["joint_attention_dim"], num_heads=flux["num_attention_heads"],
                                 hidden_size=flux["num_attention_heads"] * flux["attention_head_dim"],
                                 axes_dim=list(flux["axes_dims_rope"]))
    channels = vae["block_out_channels"]
    ae = dataclasses.replace(spec.ae_params, ch=channels[0], ch_mult=[c // channels[0] for c in channels],
                             num_res_blocks=vae["layers_per_block"])
    flux_models.configs["dev"] = dataclasses.replace(spec, params=params, ae_params=ae)
    groups = vae["norm_num_groups"]
    nn = types.SimpleNamespace(**vars(torch.nn))
    nn.GroupNorm = lambda num_groups, num_channels, **kw: torch.nn.GroupNorm(groups, num_channels, **kw)
    flux_models.nn = nn
    flux_utils.load_clip_l = functools.partial(_from_config, "clip")
    flux_utils.load_t5xxl = functools.partial(_from_config, "t5")


def main() -> None:
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    _stand_in_torchvision()
    patch_kohya()
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
