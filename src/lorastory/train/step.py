"""One training step's inputs and loss: cached latents and text, per-sample noise, the weighted loss.

The inputs are CPU work only, so the trainer prepares the next step's on a side thread while the
GPU trains; every sample's noise and timestep come from a generator seeded for that sample and
epoch alone, which is what makes resume (and any number of processes) bit-exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lorastory.models.conditioning import encode_text, time_ids
from lorastory.models.objectives import as_objective
from lorastory.train.cache import TensorCache
from lorastory.train.captions import CaptionSettings, choose_text, fresh_caption
from lorastory.train.config import TrainConfig
from lorastory.train.data import Placement, TrainItem
from lorastory.train.order import draw_sample, sample_seed

if TYPE_CHECKING:
    import torch


@functools.cache
def denoiser_class() -> type:
    """The ``Denoiser`` class, made on first use so that importing this module does not import torch."""
    import torch

    class Denoiser(torch.nn.Module):
        """The denoiser (UNet or transformer) and the text encoders being trained as one module, so DDP averages
        every LoRA gradient; ``objective`` (:mod:`lorastory.models.objectives`) says how the denoiser is called.

        Text encoders being trained encode each batch's captions live (cached embeddings would be stale);
        ``pipe`` is then the pipeline whose ``encode_prompt`` runs them.
        """

        def __init__(self, denoiser: Any, text_encoders: dict[str, Any], pipe: Any = None, objective: Any = None) -> None:
            super().__init__()
            self.denoiser = denoiser
            self.text_encoders = torch.nn.ModuleDict(text_encoders)
            self.pipe = pipe
            self.objective = objective

        def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: dict[str, torch.Tensor] | None,
                    add_time_ids: torch.Tensor, dtype: torch.dtype, captions: list[str] | None = None) -> torch.Tensor:
            if captions is not None:
                text = encode_text(self.pipe, captions, noisy.device, grad=True)
            assert text is not None
            return self.objective.predict(self.denoiser, noisy, timesteps, text, add_time_ids, dtype)

    return Denoiser


@dataclass
class Example:
    """A training sample: the picture, where it is cropped, and its cache keys.

    ``texts``/``text_keys`` are the caption's training texts and their cache keys (one, or the
    shuffled versions; empty: the item's caption and ``text_key``); ``empty_key`` is the empty
    prompt's (caption dropout). ``loss_weight`` multiplies the sample's loss (its dataset's).
    """

    item: TrainItem
    placement: Placement
    latent_key: str
    text_key: str
    texts: tuple[str, ...] = ()
    text_keys: tuple[str, ...] = ()
    empty_key: str = ""
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    loss_weight: float = 1.0
    dataset: int = 0


def draw_caption(example: Example, seed: int, epoch: int, draw: int, live: bool) -> tuple[str, str]:
    """The caption text and its cache key that draw ``draw`` of ``epoch`` trains with (seeded by them alone).

    ``live`` (text encoders being trained, nothing cached): the text is built fresh for the draw.
    """
    if live:
        return fresh_caption(example.item.caption, example.captions, seed, epoch, draw), ""
    keys = example.text_keys or (example.text_key,)
    pick = choose_text(len(keys), example.captions.dropout, seed, epoch, draw)
    if pick is None:
        return "", example.empty_key
    return (example.texts or (example.item.caption,))[pick], keys[pick]


def _loss(model_pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, objective: Any,
          config: TrainConfig, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale`` × the weighted sum of per-sample losses (scale = processes / samples in the global batch)."""
    import torch.nn.functional as F

    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    weight = objective.loss_weights(timesteps, config.snr_gamma)  # Min-SNR for noise objectives
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.device)
    return (per_sample * weights).sum() * scale


def _batch_text(keys: list[str], cache: TensorCache) -> dict[str, torch.Tensor]:
    """Cached caption embeddings for a batch (on the CPU)."""
    import torch

    texts = [cache.load(key) for key in keys]
    return {name: torch.stack(_padded([t[name] for t in texts])) for name in texts[0]}


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sequences of one length: captions of a family with a padding mask (Qwen-Image) are cached at their own
    length; zeros after the end are padding in the embeddings and in the mask alike."""
    import torch.nn.functional as F

    longest = max(t.shape[0] for t in tensors)
    return [t if t.shape[0] == longest else F.pad(t, (0, 0) * (t.dim() - 1) + (0, longest - t.shape[0])) for t in tensors]


def _draw_noise(indices: list[int], epoch: int, shape: torch.Size, config: TrainConfig,
                objective: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's noise and timestep, from a generator seeded for that sample and epoch alone."""
    import torch

    noises, timesteps = [], []
    for index in indices:
        generator = torch.Generator().manual_seed(sample_seed(config.seed, epoch, index))
        noise = torch.randn(shape, generator=generator)
        if config.noise_offset:
            noise += config.noise_offset * torch.randn((shape[0], 1, 1), generator=generator)
        noises.append(noise)
        timesteps.append(objective.draw_timestep(generator, tuple(shape)))
    return torch.stack(noises), torch.stack(timesteps)


@dataclass
class StepInputs:
    """One process's share of a global batch, prepared on the CPU (see :func:`step_inputs`)."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    add_time_ids: torch.Tensor
    text: dict[str, torch.Tensor] | None
    captions: list[str] | None
    weights: torch.Tensor
    scale: float


def step_inputs(
    indices: list[int], weights: list[float], scale: float, epoch: int, examples: list[Example],
    cache: TensorCache, objective: Any, config: TrainConfig, live_text: bool, pin: bool = False,
) -> StepInputs:
    """Everything a step needs before the GPU: cached latents and text, per-sample noise and timesteps.

    CPU work only, so the next step's inputs are prepared on a side thread while the GPU trains;
    ``pin`` puts them in page-locked memory, so the copy to the GPU does not stall the CPU.
    """
    import torch

    batch = [examples[draw_sample(i, len(examples))] for i in indices]  # indices are draws (order.py)
    chosen = [draw_caption(e, config.seed, epoch, i, live_text) for e, i in zip(batch, indices)]
    weights = [w * e.loss_weight for w, e in zip(weights, batch)]
    objective = as_objective(objective)  # the family's training objective (a bare noise scheduler: noise)
    latents = torch.stack([cache.load(e.latent_key)["latents"] for e in batch])
    noise, timesteps = _draw_noise(indices, epoch, latents.shape[1:], config, objective)
    noisy, target = objective.noisy_and_target(latents, noise, timesteps)
    add_time_ids = torch.stack([
        time_ids(e.item.size[::-1], e.placement.crop_top_left, e.placement.target[::-1]) for e in batch
    ])
    text = None if live_text else _batch_text([key for _, key in chosen], cache)
    captions = [caption for caption, _ in chosen] if live_text else None
    inputs = StepInputs(noisy, target, timesteps, add_time_ids, text, captions, torch.tensor(weights), scale)
    return _pinned(inputs) if pin else inputs


def _pinned(inputs: StepInputs) -> StepInputs:
    text = None if inputs.text is None else {k: v.pin_memory() for k, v in inputs.text.items()}
    return replace(inputs, noisy=inputs.noisy.pin_memory(), target=inputs.target.pin_memory(),
                               add_time_ids=inputs.add_time_ids.pin_memory(), text=text,
                               weights=inputs.weights.pin_memory())


def step_loss(inputs: StepInputs, model: Any, objective: Any, config: TrainConfig, device: torch.device,
              weight_dtype: torch.dtype, cudagraphs: bool = False) -> torch.Tensor:
    """This process's loss on its prepared samples of a global batch (see :func:`_loss` for the scaling).

    ``cudagraphs``: the model's blocks replay CUDA graphs, and each step must say where it begins.
    """
    import torch

    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    def put(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:  # asynchronous when pinned
        return tensor.to(device, dtype, non_blocking=tensor.is_pinned())

    text = None if inputs.text is None else {k: put(v) for k, v in inputs.text.items()}
    model_pred = model(put(inputs.noisy, weight_dtype), put(inputs.timesteps), text,
                       put(inputs.add_time_ids), weight_dtype, captions=inputs.captions)
    return _loss(model_pred, put(inputs.target), inputs.timesteps, as_objective(objective), config,
                 put(inputs.weights), inputs.scale)
