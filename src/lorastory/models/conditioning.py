"""Text conditioning per family, computed with the pipeline's own ``encode_prompt``.

Training and generation use the same function, so a LoRA trains on exactly
the embeddings it is later sampled with. The result is a flat dict of tensors
(cacheable as safetensors); :func:`unet_kwargs` turns a batch of them into the
UNet's arguments, adding SDXL/Kolors micro-conditioning (size and crop ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorastory.models.registry import family_of_pipeline

if TYPE_CHECKING:
    import torch


def encode_text(
    pipe: Any, prompts: list[str], device: torch.device | str = "cpu", grad: bool = False
) -> dict[str, torch.Tensor]:
    """Embeddings of ``prompts`` (no classifier-free guidance) as a dict of batch tensors.

    ``grad=True`` keeps the graph, for training a LoRA on the text encoder.
    """
    import torch

    with torch.set_grad_enabled(grad):
        return _encode(pipe, prompts, device)


def _encode(pipe: Any, prompts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
    # How a family's encode_prompt is called and what it returns is the family's to say.
    return family_of_pipeline(pipe).encode_prompt(pipe, prompts, device)


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL micro-conditioning: (orig h, orig w, crop top, crop left, target h, target w)."""
    import torch

    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def unet_kwargs(text: dict[str, torch.Tensor], add_time_ids: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
    """UNet keyword arguments from batched text embeddings and time ids."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": text["prompt_embeds"].to(dtype)}
    if "pooled_prompt_embeds" in text:
        assert add_time_ids is not None, "SDXL-style UNets need time ids"
        kwargs["added_cond_kwargs"] = {
            "text_embeds": text["pooled_prompt_embeds"].to(dtype),
            "time_ids": add_time_ids.to(dtype),
        }
    return kwargs
