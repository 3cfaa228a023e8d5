"""Qwen-Image-Edit as the Qwen-Image family's in-context reference (consistency ``reference_method: in_context``).

diffusers' ``QwenImageEditPipeline`` draws a new picture from a prompt and a reference picture: the
reference goes to Qwen2.5-VL's vision tower (through the model's ``processor``, a Qwen2-VL processor,
so the prompt embedding sees it) and, as VAE latents, into the joint sequence as more image tokens.
It takes one reference per prompt, so a batch of panels gets the picture once per panel. (The newer
``QwenImageEditPlusPipeline`` of Qwen-Image-Edit-2509 takes several references but draws one picture a
call, so it cannot batch a story's panels; its folders load as text-to-image models.)

An Edit model folder loads as the family's ``QwenImagePipeline`` (it draws the panels, as a FLUX.1
Kontext folder loads as Flux), keeping the processor here: diffusers cannot build it itself where
torchvision is missing, since transformers 5 checks every processor part's class and the video
processor's needs torchvision (huggingface/transformers#43986, diffusers#13140), though Qwen-Image-Edit
reads no video. The processor is built from the model's ``processor/preprocessor_config.json`` and the
pipeline's own tokenizer, with the video part left out.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lorastory.models.quiet import quiet_transformers

# Where an Edit model keeps its Qwen2-VL image processor's settings (the diffusers folder's processor component).
PROCESSOR_CONFIG = "processor/preprocessor_config.json"


@functools.cache
def _image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):  # type: ignore[misc]
        """Qwen2VLProcessor without a video processor (no torchvision needed): pictures and text only."""

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, **kwargs)
            self.video_token = self.video_token_id = None  # no videos: nothing to count (a tokenizer without one: pad)

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor


def image_only_processor(image_processor: Any, tokenizer: Any) -> Any:
    """A Qwen2-VL processor over ``image_processor`` and ``tokenizer`` (what QwenImageEditPipeline calls)."""
    return _image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer)


def edit_components(source: str, pipe: Any, local_only: bool) -> dict[str, Any]:
    """The components an Edit model adds to the text-to-image pipeline loaded from ``source``: its processor."""
    from transformers import Qwen2VLImageProcessor

    config = Path(source) / PROCESSOR_CONFIG
    if not config.is_file():  # a hub id: the small settings file, from the cache or the hub
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(source, PROCESSOR_CONFIG, local_files_only=local_only))
    with quiet_transformers():  # not "requires torchvision; falling back to ...Pil" on every load
        image_processor = Qwen2VLImageProcessor.from_pretrained(str(config.parent))
    return {"processor": image_only_processor(image_processor, pipe.tokenizer)}


def edit_reference_args(reference: Any, width: int, height: int) -> dict[str, Any]:
    """QwenImageEditPipeline's reference argument: one picture per prompt (a batch repeats it), ``reference`` at the
    panel's size already (the pipeline scales it to its own working area, about 1024², keeping the aspect ratio)."""
    return {"image": [reference]}
