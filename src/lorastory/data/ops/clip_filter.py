"""The CLIP model of the CLIP-scoring filters (not an operator).

``hf_clip`` (a local folder or hub id, CLIP or Chinese CLIP, safetensors only)
is checked when the recipe is loaded, so a missing model stops the run before
any work, and the model is loaded once per worker process, on first use.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import Filter, OpParams, load_once, recipe_check
from lorastory.errors import ClipModelError
from lorastory.hub import check_source
from lorastory.models.clip import check_clip_folder, load_clip, one_thread_in_workers, op_device


class ClipParams(OpParams):
    hf_clip: str = "openai/clip-vit-base-patch32"
    trust_remote_code: bool = False


class ClipFilter(Filter):
    """A filter that scores with the CLIP model ``hf_clip``."""

    def __init__(self, params: ClipParams) -> None:
        super().__init__(params)
        with recipe_check(self, ClipModelError):
            check_source(params.hf_clip, "CLIP model", "hf_clip", ClipModelError)
            check_clip_folder(params.hf_clip)
        self._clip: Any = None

    def _model(self) -> Any:
        """The CLIP model, loaded once per process; recipes never enable trust_remote_code (refused in build_op)."""

        def load() -> Any:
            one_thread_in_workers()
            return load_clip(self.params.hf_clip, op_device(self.params.accelerator))

        return load_once(self, "_clip", load)
