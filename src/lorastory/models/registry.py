"""Model families and how to load them: local folder, hub id, or single file.

A family says which diffusers pipeline to build and what its parts are. The
family of a folder is read from its ``model_index.json``; ``family=`` overrides.

This is the one module that knows families: everything else asks a :class:`Family`
(its denoiser attribute, how its prompts are encoded, its LoRA naming, its IP-Adapter,
its tiny test model) and never compares family names. A new family, a DiT whose
denoiser is a ``transformer`` included, is one :func:`register_family` call, in its own
module if it brings functions (e.g. its ``encode_prompt``).
Loading from a hub id works with network or a local Hugging Face cache;
offline without a cache it fails with a message naming the id and how to
download it.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lorastory.errors import ConfigError, LorastoryError, first_line
from lorastory.hub import PICKLE_SUFFIXES, looks_like_hub_id
from lorastory.models.prefetch import prefetch_weights
from lorastory.models.quiet import loading_bars_off, quiet_diffusers
from lorastory.models.speed import UNET_COMPILE_STEP_SAVING


class ModelLoadError(LorastoryError):
    """A model cannot be found or loaded."""


# Text-encoder modules a text-encoder LoRA adapts by default, per encoder architecture.
CLIP_TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
CHATGLM_TE_TARGETS = ("query_key_value", "dense")


def _encode_clip(pipe: Any, prompts: list[str], device: Any) -> dict[str, Any]:
    prompt_embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"prompt_embeds": prompt_embeds}


def _encode_chatglm_pooled(pipe: Any, prompts: list[str], device: Any) -> dict[str, Any]:
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _encode_two_clips_pooled(pipe: Any, prompts: list[str], device: Any) -> dict[str, Any]:
    # SDXL's encode_prompt takes a second prompt (for text_encoder_2) before the device.
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, device, 1, False)
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


@dataclass(frozen=True)
class IpAdapterSource:
    """Where an IP-Adapter's files are: a folder or hub id, the weights file and the image encoder folder in it
    (a family's published IP-Adapter Plus, or the user's in its place). ``encoder_repo``: for an adapter
    published without its encoder (XLabs' Flux IP-Adapter reads CLIP ViT-L), the hub id or folder the encoder
    comes from when the source has no ``image_encoder`` folder of its own."""

    source: str
    weight: str
    image_encoder: str
    revision: str | None = None
    encoder_repo: str | None = None

    @property
    def subfolder(self) -> str:
        parent = PurePosixPath(self.weight).parent.as_posix()
        return "" if parent == "." else parent

    @property
    def weight_name(self) -> str:
        return PurePosixPath(self.weight).name


@dataclass(frozen=True)
class Family:
    """What distinguishes one model family in code: the one place other modules ask.

    A new family (a DiT such as Flux or SD3 included) is one more :class:`Family` passed to
    :func:`register_family`; loading, conditioning, LoRA naming and tiny models read it from here.
    """

    name: str
    pipeline_class: str
    text_encoders: tuple[str, ...]
    resolution: int
    single_file: bool
    label: str = ""  # for messages: "SDXL"; the name when empty
    article: str = "a"  # "a Kolors model", "an SDXL model"
    denoiser: str = "unet"  # the pipeline attribute holding the denoiser: "unet" or "transformer"
    # Builds the conditioning dict (``prompt_embeds`` [, ``pooled_prompt_embeds``]) with the pipeline's encode_prompt.
    encode_prompt: Callable[[Any, list[str], Any], dict[str, Any]] = _encode_clip
    text_encoder_targets: tuple[str, ...] = CLIP_TE_TARGETS  # default text-encoder LoRA modules
    # The first text encoder feeds the denoiser its penultimate layer, so its last layer's LoRA gets no gradient.
    text_encoder_last_layer_unused: bool = False
    kohya_unet_names: str = "diffusers"  # module naming in kohya files: "diffusers" or "sgm"
    kohya_unet_layout: str = "sdxl"  # the standard UNet layout a kohya file without config assumes: "sdxl" or "sd15"
    pretrained_kwargs: tuple[tuple[str, Any], ...] = ()  # extra from_pretrained arguments
    ip_adapter: IpAdapterSource | None = None
    # "module:function" writing a random IP-Adapter for the family's denoiser as its published file's flat dict:
    # (denoiser, image encoder width, seed) -> {key: tensor}; and "module:function" checking an adapter file's
    # keys and shapes against the denoiser before diffusers loads it: (denoiser, {key: shape}, file label) -> None.
    ip_adapter_state: str = "lorastory.models.ip_adapter:plus_state_dict"
    ip_adapter_check: str | None = None
    # The pipeline class ("diffusers" name) of the in-context reference (consistency reference_method: in_context):
    # built from the loaded pipeline with from_pipe, it reads the reference picture as tokens of the joint sequence.
    in_context_pipeline: str | None = None
    # Model classes (model_index.json) bringing the in-context reference with components the text-to-image pipeline
    # lacks (Qwen-Image-Edit's processor): loaded as ``pipeline_class`` keeping them ("module:function"
    # ``in_context_components``: (source, pipe, local_only) -> {name: obj}); the reference then needs such a model
    # (``in_context_model`` names one). ``in_context_args``: (reference, width, height) -> arguments; None: Kontext's.
    in_context_models: tuple[str, ...] = ()
    in_context_components: str | None = None
    in_context_model: str = ""
    in_context_args: str | None = None
    tiny_variants: tuple[tuple[str, str], ...] = ()  # (name, "module:function" as tiny_builder): e.g. an Edit model
    # "module:function" building a tiny random pipeline: (scratch folder, latent size) -> (pipeline, scratch file or None)
    tiny_builder: str | None = None
    pipeline_module: str = "diffusers"  # where pipeline_class lives
    # How the denoiser is trained and called (lorastory.models.objectives): "noise" (epsilon or v-prediction, as the
    # scheduler config says; a UNet call) or "flow" (rectified flow matching; the family's ``predict`` call).
    objective: str = "noise"
    # "module:function" calling the denoiser on (B, C, H, W) latents in training: (denoiser, noisy, timesteps, text, dtype)
    predict: str | None = None
    lora_targets: tuple[str, ...] | None = None  # the denoiser modules a LoRA adapts by default (None: LoraSpec's)
    lora_formats: tuple[str, ...] = ("kohya",)  # the layouts a training run writes, the first as lora.safetensors
    # The text encoders a text-encoder LoRA adapts (None: all); Flux's T5-XXL stays frozen, as kohya's default.
    lora_text_encoders: tuple[str, ...] | None = None
    lora_networks: tuple[str, ...] | None = None  # the adapter kinds its LoRA files can hold (None: every kind)
    # A transformer whose kohya files keep its diffusers module names (Qwen-Image, as musubi-tuner writes them; some
    # Flux files): every Linear module by name, "N" for a block index; how ``lora_unet_`` names (dots made "_") and
    # ComfyUI's ``diffusion_model.`` keys are read back (lorastory.models.lora.dit_names). Empty: none (UNets).
    lora_modules: tuple[str, ...] = ()
    latent_patch: int = 1  # the denoiser's patch size in latent pixels: training sizes are multiples of 8 x this
    # An fp8 base (lorastory.models.fp8): the denoiser modules (class names) whose Linear layers see one row per
    # token and convert, and module names inside them whose Linear layers see one row per picture and stay.
    fp8_blocks: tuple[str, ...] = ("Transformer2DModel", "TransformerSpatioTemporalModel")
    fp8_skip: tuple[str, ...] = ()
    # A guidance-distilled family (the story's cfg is its guidance input): the pipeline argument for true CFG
    # with the negative prompt (lorastory.generate.guidance); None: cfg is classifier-free guidance already.
    true_cfg_argument: str | None = None
    # A DiT's shared-attention processor for the story's consistent-character mode ("module:Class", its ``layers``
    # static method choosing the attention layers); None: a UNet's self-attention processor, or refused for a DiT.
    shared_attention: str | None = None
    # The pipeline argument a story's cfg goes to: "guidance_scale" (CFG, or Flux dev's distilled guidance) or
    # "true_cfg_scale" (Qwen-Image: classifier-free guidance with the negative prompt).
    guidance_argument: str = "guidance_scale"
    # The generate fast path (lorastory.generate.speed): whether diffusers' fused QKV projections reach the
    # denoiser's attention (Qwen-Image's processor reads Q, K, V apart: fusing would only add weights), and
    # whether regional compilation compiles the denoiser's own ``_repeated_blocks`` (a DiT's: diffusers' list)
    # rather than a UNet's transformer and ResNet blocks.
    speed_qkv: bool = True
    compile_repeated: bool = False
    # Seconds a compiled denoiser saves per image-step per megapixel, weighed by ``--compile auto`` against the
    # warm-up (lorastory.generate.speed.compile_choice); the UNet's measured figure unless the family has its own.
    compile_step_saving: float = UNET_COMPILE_STEP_SAVING
    # The SDPA backends a training step may use (None: torch's choice). cuDNN's fused attention backward fails on
    # a DiT's joint attention at full size (H200, torch 2.11, cuDNN 9.19: "mha_graph.execute" in the first backward,
    # bench/flux_backward_probe.py; pytorch/pytorch#122695), while flash and efficient attention run it.
    training_attention: tuple[str, ...] | None = None

    @property
    def display(self) -> str:
        return self.label or self.name

    def pipeline_type(self) -> Any:
        module = importlib.import_module(self.pipeline_module)
        return getattr(module, self.pipeline_class)

    def denoiser_of(self, pipe: Any) -> Any:
        """The pipeline's denoiser (its UNet or transformer)."""
        return getattr(pipe, self.denoiser)

    def set_denoiser(self, pipe: Any, module: Any) -> None:
        setattr(pipe, self.denoiser, module)

    @property
    def trainable_text_encoders(self) -> tuple[str, ...]:
        """The text encoders a text-encoder LoRA adapts."""
        return self.text_encoders if self.lora_text_encoders is None else self.lora_text_encoders

    def resolve(self, hook: str) -> Callable[..., Any]:
        """The function a ``"module:function"`` hook of this family names."""
        module, _, function = hook.partition(":")
        return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]

    def check_in_context(self, pipe: Any) -> tuple[str, dict[str, Any]]:
        """The in-context pipeline class for ``pipe`` and the components it adds, or a one-line ConfigError."""
        if self.in_context_pipeline is None:
            raise ConfigError(f"the {self.display} family has no in-context reference; use consistency.reference_method: "
                              "ip_adapter")
        if not self.in_context_models:
            return self.in_context_pipeline, {}
        carried = getattr(pipe, "_lorastory_in_context", None)
        if carried is None:
            raise ConfigError(f"the {self.display} in-context reference needs {self.in_context_model}: pass it as "
                              "--model (it draws the stories too), or use consistency.mode: attention")
        return carried  # type: ignore[no-any-return]

    def in_context_pipe(self, pipe: Any) -> Any:
        """The family's in-context reference pipeline sharing ``pipe``'s modules (no copy), or a ConfigError."""
        class_name, components = self.check_in_context(pipe)
        module = importlib.import_module(self.pipeline_module)
        with quiet_diffusers():  # from_pipe casts every shared module to its dtype, float32 unless told: the pipe's own
            return getattr(module, class_name).from_pipe(pipe, dtype=pipe.dtype, **components)


FAMILIES: dict[str, Family] = {}
# Hub ids whose family is known without fetching anything.
KNOWN_HUB_MODELS: dict[str, str] = {}


def register_family(family: Family, *hub_ids: str) -> Family:
    """Add ``family`` (and hub ids known to be of it); every module then knows it."""
    FAMILIES[family.name] = family
    KNOWN_HUB_MODELS.update(dict.fromkeys(hub_ids, family.name))
    return family


def unregister_family(name: str) -> None:
    """Remove a family added by :func:`register_family` (tests)."""
    FAMILIES.pop(name, None)
    for hub_id in [h for h, n in KNOWN_HUB_MODELS.items() if n == name]:
        del KNOWN_HUB_MODELS[hub_id]


register_family(Family(
    "kolors", "KolorsPipeline", ("text_encoder",), 1024, False, label="Kolors", article="a",
    encode_prompt=_encode_chatglm_pooled, text_encoder_targets=CHATGLM_TE_TARGETS,
    ip_adapter=IpAdapterSource("Kwai-Kolors/Kolors-IP-Adapter-Plus", "ip_adapter_plus_general.safetensors",
                               "image_encoder", revision="refs/pr/4"),
    tiny_builder="lorastory.models.tiny:tiny_kolors",
), "Kwai-Kolors/Kolors-diffusers")
register_family(Family(
    "sdxl", "StableDiffusionXLPipeline", ("text_encoder", "text_encoder_2"), 1024, True, label="SDXL", article="an",
    encode_prompt=_encode_two_clips_pooled, text_encoder_last_layer_unused=True, kohya_unet_names="sgm",
    ip_adapter=IpAdapterSource("h94/IP-Adapter", "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                               "models/image_encoder"),
    tiny_builder="lorastory.models.tiny:tiny_sdxl",
), "stabilityai/stable-diffusion-xl-base-1.0")
register_family(Family(
    "sd15", "StableDiffusionPipeline", ("text_encoder",), 512, True, label="SD1.5", article="an",
    kohya_unet_layout="sd15", pretrained_kwargs=(("safety_checker", None), ("requires_safety_checker", False)),
    ip_adapter=IpAdapterSource("h94/IP-Adapter", "models/ip-adapter-plus_sd15.safetensors", "models/image_encoder"),
    tiny_builder="lorastory.models.tiny:tiny_sd15",
), "stable-diffusion-v1-5/stable-diffusion-v1-5")


def get_family(name: str) -> Family:
    """The family called ``name``; unknown names list the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}'; choose one of {', '.join(FAMILIES)}") from None


def _labels() -> str:
    """"Kolors, SDXL or SD1.5": the known families for messages."""
    labels = [f.display for f in FAMILIES.values()]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"


def family_of_pipeline(pipe: Any) -> Family:
    """The family of a loaded pipeline, from its class."""
    by_pipeline = {f.pipeline_class: f for f in FAMILIES.values()}
    by_pipeline.update({f.in_context_pipeline: f for f in FAMILIES.values() if f.in_context_pipeline})
    for cls in type(pipe).__mro__:
        if cls.__name__ in by_pipeline:
            return by_pipeline[cls.__name__]
    raise ConfigError(f"{type(pipe).__name__} is not a {_labels()} pipeline")


def denoiser(pipe: Any) -> Any:
    """The denoiser (UNet or transformer) of a loaded pipeline of a known family."""
    return family_of_pipeline(pipe).denoiser_of(pipe)


def _model_index(folder: str | os.PathLike[str]) -> dict[str, Any]:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{folder}: not a diffusers model folder (no model_index.json)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ModelLoadError(f"{index}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{index}: expected a JSON object")
    return data


def _family_of_class(class_name: str) -> Family | None:
    for family in FAMILIES.values():
        if class_name == family.pipeline_class or class_name.startswith(family.pipeline_class.removesuffix("Pipeline")):
            return family
    return None


def _component_class(index: dict[str, Any], component: str) -> str | None:
    entry = index.get(component)
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return None


def declared_family(folder: str | os.PathLike[str]) -> tuple[Family, str] | None:
    """The family a diffusers folder is, with the evidence (for messages), or None when it cannot tell.

    The pipeline class in ``model_index.json`` decides; a folder naming another pipeline class is
    judged by its text encoders (ChatGLM: Kolors; two CLIPs: SDXL; one: SD1.5).
    """
    index = _model_index(folder)
    class_name = index.get("_class_name")
    if isinstance(class_name, str) and (family := _family_of_class(class_name)) is not None:
        return family, f"model_index.json: {class_name}"
    encoder, encoder_2 = _component_class(index, "text_encoder"), _component_class(index, "text_encoder_2")
    if encoder and "ChatGLM" in encoder:
        return FAMILIES["kolors"], f"model_index.json: text_encoder {encoder}"
    if encoder and encoder_2:
        return FAMILIES["sdxl"], f"model_index.json: text_encoder {encoder} and text_encoder_2 {encoder_2}"
    if encoder and "CLIP" in encoder:
        return FAMILIES["sd15"], f"model_index.json: text_encoder {encoder} only"
    return None


def detect_family(folder: str | os.PathLike[str]) -> Family:
    """Read the family from a diffusers folder's ``model_index.json``."""
    found = declared_family(folder)
    if found is None:
        class_name = _model_index(folder).get("_class_name")
        shown = class_name if isinstance(class_name, str) and class_name else "(none)"
        raise ModelLoadError(f"{folder}: pipeline {shown} is not {_labels()}; pass --family")
    return found[0]


def check_family(folder: str | os.PathLike[str], family: Family) -> None:
    """Refuse ``--family`` naming another family than the folder's configs say (one line, not a
    crash deep in a tokenizer). A folder that does not say is left to ``family``."""
    found = declared_family(folder)
    if found is not None and found[0].name != family.name:
        actual, evidence = found
        raise ConfigError(
            f"{folder} is {actual.article} {actual.display} model ({evidence}), "
            f"not {family.name}: drop --family or pass --family {actual.name}"
        )


def load_pipeline(
    model: str | os.PathLike[str],
    family: str | None = None,
    dtype: Any = None,
    config: str | None = None,
    allow_pickle: bool = False,
    device: str | None = None,
) -> Any:
    """Load a diffusers pipeline from any supported source: on the CPU (move it yourself), or a folder or hub id
    straight onto ``device`` (``"cuda"``), each weight moved as it is read.

    Loading onto the GPU spares the copy of the whole model in the CPU's memory and the ``pipe.to(device)``
    pass over it afterwards (Kolors: 16.6 GB). A local model's weight files are read ahead while diffusers
    and transformers import (:mod:`lorastory.models.prefetch`).
    """
    source = str(model)
    path = Path(source).expanduser()
    if path.is_dir() or path.is_file():
        prefetch_weights(path)
    if path.is_dir():
        fam = get_family(family) if family else detect_family(path)
        if family:
            check_family(path, fam)
        return _from_pretrained(fam, str(path), dtype, local_only=True, device=device)
    if path.is_file():
        return _from_single_file(path, family, dtype, config, allow_pickle)
    if looks_like_hub_id(source):
        known = KNOWN_HUB_MODELS.get(source)
        if family and known and get_family(family).name != known:
            actual = get_family(known)
            raise ConfigError(f"{source} is {actual.article} {actual.display} model, not {family}: "
                              f"drop --family or pass --family {known}")
        name = family or known or _hub_family(source)
        return _from_pretrained(get_family(name), source, dtype, local_only=False, device=device)
    raise ModelLoadError(f"model '{source}': no such folder or file, and not a hub id (owner/name)")


def _from_pretrained(family: Family, source: str, dtype: Any, local_only: bool, device: str | None = None) -> Any:
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if device is not None:
        kwargs["device_map"] = device  # diffusers' one-device map: every component on it, pipe.to() still allowed
    kwargs.update(family.pretrained_kwargs)
    try:
        with warnings.catch_warnings(), loading_bars_off():
            # diffusers >= 0.42 renamed torch_dtype to dtype; older releases know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*use `dtype` instead", category=FutureWarning)
            pipe = family.pipeline_type().from_pretrained(source, use_safetensors=True, local_files_only=local_only, **kwargs)
        if family.in_context_models and (class_name := _declared_class(source, local_only)) in family.in_context_models:
            # An Edit model: the text-to-image pipeline over its modules, keeping what the in-context pipeline adds.
            extra = family.resolve(str(family.in_context_components))(source, pipe, local_only)
            pipe._lorastory_in_context = (class_name, extra)
        return pipe
    except (OSError, ValueError, EnvironmentError) as err:
        raise _load_error(source, err, local_only) from None


def _declared_class(source: str, local_only: bool) -> str | None:
    """The pipeline class a folder's or hub repository's ``model_index.json`` names (None: unreadable)."""
    try:
        if not Path(source).is_dir():
            from huggingface_hub import hf_hub_download

            source = str(Path(hf_hub_download(source, "model_index.json", local_files_only=local_only)).parent)
        name = _model_index(source).get("_class_name")
    except Exception:  # offline, no such file: a plain model as far as loading can tell
        return None
    return name if isinstance(name, str) else None


def _hub_family(model_id: str) -> str:
    try:
        from huggingface_hub import hf_hub_download

        index = hf_hub_download(model_id, "model_index.json")
    except Exception as err:  # offline, missing repo, auth: all end the same way
        raise _load_error(model_id, err, local_only=False) from None
    return detect_family(Path(index).parent).name


def _load_error(source: str, err: Exception, local_only: bool) -> ModelLoadError:
    first = first_line(err)
    if local_only:
        return ModelLoadError(f"cannot load model folder {source}: {first}")
    return ModelLoadError(
        f"cannot load '{source}' from the Hugging Face hub or the local cache ({first}). Offline? Download it "
        f"where you have network (huggingface-cli download {source}) and pass --model with that folder"
    )


def _from_single_file(path: Path, family: str | None, dtype: Any, config: str | None, allow_pickle: bool) -> Any:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path}: pickle checkpoints can run code when loaded; convert it to .safetensors "
            "or pass --allow-pickle if you trust its source"
        )
    if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
        raise ModelLoadError(f"{path}: expected a diffusers folder or a .safetensors checkpoint")
    if not family:
        singles = " or ".join(f.name for f in FAMILIES.values() if f.single_file)
        raise ModelLoadError(f"{path}: a single-file checkpoint needs --family ({singles})")
    fam = get_family(family)
    if not fam.single_file:
        raise ModelLoadError(f"{path}: diffusers cannot load {fam.name} from a single file; use a diffusers folder")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if config is not None:
        kwargs["config"] = config
    try:
        return fam.pipeline_type().from_single_file(str(path), **kwargs)
    except Exception as err:  # diffusers raises many types for a bad or unconfigurable file
        first = first_line(err)
        raise ModelLoadError(
            f"cannot load {path} as {fam.name} ({first}); diffusers needs the architecture's config for a "
            "single file: run once with network (it is then cached) or convert the file to a diffusers folder"
        ) from None


# Families with functions of their own live in their own modules and register themselves on import
# (last: such a module imports this one, and the tiny-model helpers, which import this one too).
importlib.import_module("lorastory.models.families.flux")
importlib.import_module("lorastory.models.families.qwen_image")
