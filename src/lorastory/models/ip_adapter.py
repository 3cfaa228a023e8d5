"""IP-Adapters for a reference image: where each family's adapter lives, loading it, a tiny one.

An IP-Adapter adds a second attention whose keys and values come from a reference image (CLIP
vision features turned into a few tokens): in a UNet's cross-attention (IP-Adapter Plus,
resampled hidden states), or in a Flux double block's image stream (XLabs' adapter, the projected
image embedding; :mod:`lorastory.models.families.flux_ip_adapter`). :func:`ip_adapter_loaded` puts
one into a pipeline through diffusers' own loader (``pipe.load_ip_adapter``: ``IPAdapterMixin`` or
``FluxIPAdapterMixin``) and takes it out again afterwards. Only safetensors files are read.

A source is a local folder or a hub id laid out like the published adapters: the weights
file at ``weight`` and the CLIP vision encoder in the ``image_encoder`` folder, both relative
to the source (:data:`DEFAULT_IP_ADAPTERS` lists each family's). An adapter published without its
encoder (Flux's) names where the encoder comes from instead (``encoder_repo``: CLIP ViT-L/14) unless
its folder has an ``image_encoder`` of its own (:func:`encoder_location`). A family may check the
file's keys and shapes before diffusers loads it (``Family.ip_adapter_check``), so another
family's adapter is one line. Offline, a hub id that is not in the local cache fails at once with
one line naming it and how to download it (with the encoder where it is separate).

:func:`build_tiny_ip_adapter` writes a randomly initialised adapter for a given model in its
family's layout and file format (the family's ``ip_adapter_state``: for the UNets ``image_proj.*`` /
``ip_adapter.*`` keys, the original IP-Adapter-Plus names that diffusers converts on load; for Flux
XLabs' keys), with a tiny encoder inside, so tests and demos run the real loading path.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, first_line
from lorastory.fileio import atomic_dir
from lorastory.hub import hub_reachable, looks_like_hub_id, offline_by_env
from lorastory.models.registry import (
    FAMILIES,
    IpAdapterSource,
    ModelLoadError,
    denoiser,
    detect_family,
    family_of_pipeline,
    get_family,
)
from lorastory.models.quiet import quiet_diffusers, quiet_transformers

IP_ADAPTER_OPTION = "consistency.ip_adapter"


# Each family's published IP-Adapter Plus. Kolors' safetensors files are on the hub's refs/pr/4
# (its main branch has pickles only, which are never loaded here).
# The layouts are the families' own (Family.ip_adapter in the registry).
def default_ip_adapter(family: str) -> IpAdapterSource:
    """The published IP-Adapter Plus of ``family``."""
    published = get_family(family).ip_adapter
    if published is None:
        raise ConfigError(f"no IP-Adapter is known for model family '{family}', so the consistency modes reference "
                          "and both do not apply to it; use mode none or attention")
    return published


DEFAULT_IP_ADAPTERS: dict[str, IpAdapterSource] = {
    name: default_ip_adapter(name) for name, family in FAMILIES.items() if family.ip_adapter is not None
}


def resolve_ip_adapter(family: str, source: str | None = None, weight: str | None = None,
                       image_encoder: str | None = None) -> IpAdapterSource:
    """The family's default adapter with what the user set in its place (a revision only for the default id).

    An ``image_encoder`` the user names is inside the adapter's folder or repository; otherwise a family
    whose adapter is published without its encoder (``encoder_repo``) reads it from there unless the
    adapter's folder has one of its own (:func:`encoder_location`).
    """
    default = default_ip_adapter(family)
    spec = replace(default, source=source or default.source,
                   revision=default.revision if (source or default.source) == default.source else None)
    spec = replace(spec, weight=weight or spec.weight, image_encoder=image_encoder or spec.image_encoder,
                   encoder_repo=None if image_encoder else spec.encoder_repo)
    if not spec.weight.endswith(".safetensors"):
        raise ConfigError(f"IP-Adapter weights {spec.weight}: only .safetensors files are loaded; convert it or pick "
                          "the .safetensors file of the adapter")
    return spec


def encoder_location(spec: IpAdapterSource) -> tuple[str, str, str | None]:
    """Where the image encoder is read from: (folder or hub id, subfolder, revision)."""
    own = Path(spec.source).expanduser() / spec.image_encoder / "config.json"
    if spec.encoder_repo is None or own.is_file():
        return spec.source, spec.image_encoder, spec.revision
    return spec.encoder_repo, "", None


def _all_local(spec: IpAdapterSource) -> bool:
    return Path(spec.source).expanduser().is_dir() and Path(encoder_location(spec)[0]).expanduser().is_dir()


@dataclass
class IpAdapterInfo:
    """What :func:`ip_adapter_loaded` put into the pipeline (recorded in the manifest)."""

    source: str
    weight: str
    image_encoder: str
    revision: str | None
    scale: float
    encoder_source: str | None = None  # where the image encoder came from when not the adapter's own folder

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "weight": self.weight, "image_encoder": self.image_encoder,
                "revision": self.revision, "scale": self.scale, "encoder_source": self.encoder_source or self.source}


class IpAdapterMismatch(ModelLoadError):
    """An IP-Adapter file that does not fit the model (another family's, another size): not retried."""


def _load_error(spec: IpAdapterSource, err: BaseException, local: bool) -> ModelLoadError:
    if local:
        return ModelLoadError(f"cannot load the IP-Adapter in {spec.source} ({spec.weight}, {spec.image_encoder}/): "
                              f"{first_line(err)}")
    return ModelLoadError(f"cannot load IP-Adapter '{spec.source}' ({spec.weight}) from the hub: {first_line(err)}")


def _encoder_hint(spec: IpAdapterSource, folder: str) -> str:
    return (f"hf download {spec.encoder_repo} config.json model.safetensors "
            f"--local-dir {folder}/{spec.image_encoder}")


def _offline_error(spec: IpAdapterSource, missing: str | None = None) -> ModelLoadError:
    reason = "HF_HUB_OFFLINE is set" if offline_by_env() else "the hub cannot be reached"
    if missing is not None:  # the adapter is here, its image encoder (encoder_repo) is not
        return ModelLoadError(
            f"the image encoder '{missing}' of the IP-Adapter in {spec.source} is not in the local Hugging Face cache "
            f"and {reason}; download it where you have network ({_encoder_hint(spec, spec.source)})")
    revision = f" --revision {spec.revision}" if spec.revision else ""
    encoder = f", and its image encoder: {_encoder_hint(spec, 'DIR')}" if spec.encoder_repo else ""
    return ModelLoadError(
        f"IP-Adapter '{spec.source}' is not in the local Hugging Face cache and {reason}; download it where you have "
        f"network (hf download {spec.source}{revision} --local-dir DIR{encoder}) and set {IP_ADAPTER_OPTION}: DIR"
    )


def _weight_shapes(spec: IpAdapterSource, local_only: bool) -> dict[str, tuple[int, ...]]:
    """The adapter file's ``{key: shape}``, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    path = Path(spec.source).expanduser() / spec.weight
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(spec.source, spec.weight, revision=spec.revision, local_files_only=local_only))
    with safe_open(str(path), "pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _load_into(pipe: Any, spec: IpAdapterSource, local_only: bool) -> None:
    from transformers import CLIPVisionModelWithProjection

    encoder_source, encoder_folder, encoder_revision = encoder_location(spec)
    with quiet_transformers():
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            encoder_source, subfolder=encoder_folder, use_safetensors=True, local_files_only=local_only,
            revision=encoder_revision, dtype=denoiser(pipe).dtype,
        )
    family = family_of_pipeline(pipe)
    if family.ip_adapter_check is not None:  # a file that does not fit: one line naming what, not a KeyError
        problem = family.resolve(family.ip_adapter_check)(denoiser(pipe), _weight_shapes(spec, local_only), encoder)
        if problem:
            raise IpAdapterMismatch(f"IP-Adapter {spec.source} ({spec.weight}) {problem}; set {IP_ADAPTER_OPTION} to "
                                    f"{family.article} {family.display} IP-Adapter such as {default_ip_adapter(family.name).source}")
    pipe.register_modules(image_encoder=encoder.to(denoiser(pipe).device))
    with quiet_diffusers():  # the encoder is registered already, so each family's loader (UNet or Flux) reads only the adapter file
        pipe.load_ip_adapter(spec.source, subfolder=spec.subfolder, weight_name=spec.weight_name,
                             local_files_only=local_only, revision=spec.revision)


def _check_hub_files(spec: IpAdapterSource) -> None:
    """An adapter or encoder on the hub that is not cached, with no hub to reach: one line saying what to download."""
    from huggingface_hub import try_to_load_from_cache

    adapter_here = Path(spec.source).expanduser().is_dir()
    if not adapter_here and not isinstance(try_to_load_from_cache(spec.source, spec.weight, revision=spec.revision), str):
        if not hub_reachable():
            raise _offline_error(spec)
    encoder_source, encoder_folder, encoder_revision = encoder_location(spec)
    if encoder_source == spec.source or Path(encoder_source).expanduser().is_dir():
        return
    if not isinstance(try_to_load_from_cache(encoder_source, "config.json", revision=encoder_revision), str):
        if not hub_reachable():
            raise _offline_error(spec, missing=encoder_source) if adapter_here else _offline_error(spec)


def check_ip_adapter(spec: IpAdapterSource) -> None:
    """Fail early, before any work, when ``spec`` cannot be loaded from here (missing files, offline hub id)."""
    path = Path(spec.source).expanduser()
    if path.is_dir():
        encoder_source, encoder_folder, _ = encoder_location(spec)
        needed = [spec.weight] + ([f"{encoder_folder}/config.json"] if encoder_source == spec.source else [])
        missing = [name for name in needed if not (path / name).is_file()]
        if missing:
            raise ModelLoadError(f"IP-Adapter folder {spec.source} has no {missing[0]}; set {IP_ADAPTER_OPTION} to a folder "
                                 "laid out like the model family's published IP-Adapter (or set ip_adapter_weight / "
                                 "image_encoder to where the files are)")
        _check_hub_files(spec)
        return
    if path.exists() or not looks_like_hub_id(spec.source):
        raise ModelLoadError(f"IP-Adapter '{spec.source}': no such folder, and not a hub id (owner/name); "
                             f"check {IP_ADAPTER_OPTION}")
    _check_hub_files(spec)


@contextlib.contextmanager
def ip_adapter_loaded(pipe: Any, spec: IpAdapterSource, scale: float) -> Iterator[IpAdapterInfo]:
    """Load ``spec`` into ``pipe`` at ``scale`` for the block, then restore the pipeline as it was.

    Restored: the denoiser's attention processors (the very objects, so fused-QKV processors stay
    fused), its text projection (Kolors), and the pipeline's image encoder and feature extractor.
    """
    if type(getattr(denoiser(pipe), "encoder_hid_proj", None)).__name__ == "MultiIPAdapterImageProjection":
        raise ConfigError("the pipeline already has an IP-Adapter loaded; unload it (pipe.unload_ip_adapter()) first")
    local = _all_local(spec)
    if not local:
        check_ip_adapter(spec)
    unet = denoiser(pipe)
    saved = {"processors": unet.attn_processors, "image_encoder": getattr(pipe, "image_encoder", None),
             "feature_extractor": getattr(pipe, "feature_extractor", None)}
    pipe.register_modules(image_encoder=None)
    try:
        try:
            _load_into(pipe, spec, local_only=True)
        except IpAdapterMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means these files cannot be used
            if local:
                raise _load_error(spec, err, local) from None
            _restore(pipe, saved)
            if not hub_reachable():
                raise _offline_error(spec) from None
            try:
                _load_into(pipe, spec, local_only=False)
            except IpAdapterMismatch:
                raise
            except Exception as hub_err:  # noqa: BLE001
                raise _load_error(spec, hub_err, local) from None
        pipe.set_ip_adapter_scale(scale)
        encoder_source = encoder_location(spec)[0]
        yield IpAdapterInfo(spec.source, spec.weight, spec.image_encoder, spec.revision, scale,
                            None if encoder_source == spec.source else encoder_source)
    finally:
        _restore(pipe, saved)


def _restore(pipe: Any, saved: dict[str, Any]) -> None:
    unet = denoiser(pipe)
    if type(getattr(unet, "encoder_hid_proj", None)).__name__ == "MultiIPAdapterImageProjection":
        pipe.unload_ip_adapter()
    elif getattr(unet, "text_encoder_hid_proj", None) is not None:  # a load that failed half way (Kolors)
        unet.encoder_hid_proj = unet.text_encoder_hid_proj
        unet.text_encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = "text_proj"
    unet.set_attn_processor(dict(saved["processors"]))  # diffusers empties the dict it is given
    pipe.register_modules(image_encoder=saved["image_encoder"], feature_extractor=saved["feature_extractor"])


# --------------------------------------------------------------------------- a tiny random adapter


def _cross_attention_layers(unet: Any) -> list[Any]:
    """The UNet's cross-attention modules in the order diffusers numbers IP-Adapter weights (1, 3, 5, ...)."""
    layers = []
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            layers.append(unet.get_submodule(name.removesuffix(".processor")))
    return layers


# Inside one resampler layer: diffusers' names → the original IP-Adapter-Plus ones (to_k and to_v are one to_kv there).
_RESAMPLER_RENAMES = (("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.", "0.to_q."), ("attn.to_out.0.", "0.to_out."),
                      ("ff.0.", "1.0."), ("ff.1.net.0.proj.", "1.1."), ("ff.1.net.2.", "1.3."))


def _original_resampler_keys(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' ``IPAdapterPlusImageProjection`` names → the original IP-Adapter-Plus names diffusers reads."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        prefix, rest = f"layers.{parts[1]}", ".".join(parts[2:])
        if rest == "attn.to_k.weight":
            out[f"{prefix}.0.to_kv.weight"] = torch.cat([value, state[f"{prefix}.attn.to_v.weight"]])
            continue
        if rest == "attn.to_v.weight":
            continue
        new, old = next(((new, old) for old, new in _RESAMPLER_RENAMES if rest.startswith(old)), (None, None))
        if new is None:
            raise ValueError(f"unexpected resampler weight {key}")
        out[f"{prefix}.{new}{rest[len(old):]}"] = value
    return out


def ip_adapter_state_dict(unet: Any, image_embed_dim: int, num_tokens: int = 4, hidden_dim: int = 64,
                          seed: int = 0) -> dict[str, Any]:
    """A random IP-Adapter-Plus for ``unet`` as the flat safetensors dict (``image_proj.*``, ``ip_adapter.*``).

    ``image_embed_dim`` is the vision encoder's hidden size; the resampler has diffusers' fixed
    depth 4 and 64-wide heads (``hidden_dim`` a multiple of 64).
    """
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    layers = _cross_attention_layers(unet)
    if not layers:
        raise ConfigError("this UNet has no cross-attention layers to attach an IP-Adapter to")
    cross_dim = layers[0].to_k.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resampler = IPAdapterPlusImageProjection(embed_dims=image_embed_dim, output_dims=cross_dim, hidden_dims=hidden_dim,
                                                 heads=hidden_dim // 64, num_queries=num_tokens)
        flat = {f"image_proj.{k}": v.detach().clone().contiguous()
                for k, v in _original_resampler_keys(resampler.state_dict()).items()}
        for index, attn in enumerate(layers):
            key_id = 2 * index + 1
            for part in ("to_k_ip", "to_v_ip"):
                linear = torch.nn.Linear(cross_dim, attn.to_k.out_features, bias=False)
                flat[f"ip_adapter.{key_id}.{part}.weight"] = linear.weight.detach().clone().contiguous()
    return flat


def tiny_image_encoder(image_size: int = 32, hidden: int = 32, seed: int = 0) -> Any:
    """A tiny random ``CLIPVisionModelWithProjection`` (what IP-Adapters read images with)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=image_size // 4, projection_dim=hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(config).eval()


def plus_state_dict(unet: Any, encoder: Any, seed: int = 0) -> dict[str, Any]:
    """The UNet families' ``ip_adapter_state`` hook: a random IP-Adapter-Plus reading ``encoder``'s hidden states."""
    return ip_adapter_state_dict(unet, encoder.config.hidden_size, seed=seed)


def _denoiser_of(model: str | os.PathLike[str]) -> tuple[Any, Any]:
    """The denoiser of a diffusers model folder (built from its config, random weights) and the folder's family."""
    import diffusers
    from diffusers import ModelMixin

    folder = Path(model)
    family = detect_family(folder)
    config_file = folder / family.denoiser / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder}: no {family.denoiser}/config.json")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_class = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(model_class, type) and issubclass(model_class, ModelMixin)):
        raise ModelLoadError(f"{config_file}: _class_name {config.get('_class_name')!r} is not a diffusers model class")
    return model_class.from_config(config), family


def build_tiny_ip_adapter(out_dir: str | os.PathLike[str], model: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a random IP-Adapter fitting the denoiser of the diffusers folder ``model`` at ``out_dir``.

    The folder has the model family's published layout and file format (:data:`DEFAULT_IP_ADAPTERS`;
    the family's ``ip_adapter_state`` writes the weights) with the image encoder in ``image_encoder``
    inside it, so it loads with the default names. The same seed gives the same bytes.
    """
    from safetensors.torch import save_file

    model_denoiser, family = _denoiser_of(model)
    spec = default_ip_adapter(family.name)
    encoder = tiny_image_encoder(seed=seed)
    state = family.resolve(family.ip_adapter_state)(model_denoiser, encoder, seed=seed)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        weight = tmp / spec.weight
        weight.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(weight), metadata={"format": "pt"})
        with quiet_transformers():
            encoder.save_pretrained(tmp / spec.image_encoder, safe_serialization=True)
    return out
