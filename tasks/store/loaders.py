"""Trained models rebuilt from their checkpoints (store/checkpoint.py has the format).

Loaders take a workspace and a checkpoint name and return modules in eval mode, frozen,
with their EMA weights: `load_autoencoder`, `load_clip`, and `load_pipeline` for a whole
text-to-image pipeline. `text_to_image` is the one place a pipeline is composed.

A CLIP used as a judge or filter is named "marble:NAME" (a marble CLIP checkpoint) or
"openclip:ARCH:TAG" (pretrained open_clip weights already on disk): `load_clip_embedder`
loads either, and `clip_weights_digest` is what results computed with it are keyed by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eval.clip_embedder import ClipEmbedder
from models.autoencoder import AutoencoderConfig, build_autoencoder
from models.clip import ClipConfig, TextConditioner, build_clip, make_tokenizer
from models.diffusion import make_alphas_cumprod
from models.pipeline import TextToImage
from models.unet import UNet, UNetConfig
from tasks.store.checkpoint import dataclass_from_json, digest, load_config, load_weights
from tasks.store.workspace import Workspace

MARBLE = "marble:"  # a CLIP trained by marble: marble:<checkpoint name>
OPENCLIP = "openclip:"  # pretrained open_clip weights: openclip:<architecture>:<tag or file>
# pretrained open_clip models that name no normalisation use OpenAI's
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModelError(ValueError):
    """A CLIP named by the user cannot be loaded (bad name, weights not on this machine)."""


def _frozen(module: nn.Module, device) -> nn.Module:
    return module.to(device).eval().requires_grad_(False)


def load_autoencoder(workspace: Workspace, name: str, device="cpu") -> nn.Module:
    """The trained (EMA) autoencoder, with its latent statistics (weightless for `identity`)."""
    ckpt_dir = workspace.checkpoint("autoencoder", name)
    cfg = dataclass_from_json(AutoencoderConfig, load_config(ckpt_dir)["autoencoder"])
    model = build_autoencoder(cfg)
    if not cfg.identity:
        load_weights(ckpt_dir, model, "ema")
    return _frozen(model, device)


def load_clip(workspace: Workspace, name: str, device="cpu") -> tuple[nn.Module, ClipConfig]:
    """(CLIP model, its ClipConfig) with the EMA weights."""
    ckpt_dir = workspace.checkpoint("clip", name)
    cfg = dataclass_from_json(ClipConfig, load_config(ckpt_dir)["clip"])
    return _frozen(load_weights(ckpt_dir, build_clip(cfg), "ema"), device), cfg


@dataclass
class Conditioning:
    """The frozen parts of a text-to-image pipeline around its U-Net."""

    autoencoder: nn.Module
    text: TextConditioner
    tokenizer: Callable[[list[str]], torch.Tensor]


def load_conditioning(
    workspace: Workspace, text_encoder: str, autoencoder: str, device="cpu"
) -> Conditioning:
    clip_model, clip_cfg = load_clip(workspace, text_encoder, device)
    return Conditioning(
        autoencoder=load_autoencoder(workspace, autoencoder, device),
        text=TextConditioner(clip_model).to(device),
        tokenizer=make_tokenizer(clip_cfg),
    )


def text_to_image(config: dict[str, Any], unet: nn.Module, parts: Conditioning) -> TextToImage:
    """Compose a pipeline from a diffusion checkpoint's config.json, its U-Net and the frozen
    parts that config names."""
    return TextToImage(
        unet=unet.eval(),
        autoencoder=parts.autoencoder,
        text=parts.text,
        tokenizer=parts.tokenizer,
        alphas_cumprod=make_alphas_cumprod(config["schedule"], config["num_train_timesteps"]),
        prediction_type=config["prediction_type"],
        latent_shape=tuple(config["latent_shape"]),
    )


def load_pipeline(workspace: Workspace, name: str, device="cpu") -> TextToImage:
    """The text-to-image pipeline of diffusion checkpoint `name` (EMA weights), ready to sample."""
    ckpt_dir = workspace.checkpoint("diffusion", name)
    config = load_config(ckpt_dir)
    for kind, key in (("clip", "text_encoder"), ("autoencoder", "autoencoder")):
        found = digest(workspace.checkpoint(kind, config[key]))
        if found != config[f"{key}_digest"]:
            raise ValueError(
                f"diffusion checkpoint {name!r} was trained on {kind} {config[key]!r} with "
                f"digest {config[f'{key}_digest']}, but the workspace now holds {found}; "
                "retrain it on the current encoders"
            )
    unet = load_weights(ckpt_dir, UNet(dataclass_from_json(UNetConfig, config["unet"])), "ema")
    parts = load_conditioning(workspace, config["text_encoder"], config["autoencoder"], device)
    return text_to_image(config, _frozen(unet, device), parts)


def load_pretrained_openclip(arch: str, pretrained: str, device, cache_dir: str | None = None):
    """(model, tokenizer) of a pretrained open_clip model whose weights are already on disk."""
    import open_clip

    if arch not in open_clip.list_models():
        raise ClipModelError(
            f"open_clip has no architecture {arch!r} (see open_clip.list_models())"
        )
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, cache_dir=cache_dir, device=device
        )
    except Exception as e:  # no file: hub offline error, RuntimeError, FileNotFoundError ...
        raise ClipModelError(
            f"pretrained open_clip weights {arch}/{pretrained} are not on this machine "
            f"(looked in {cache_dir or 'the Hugging Face cache, HF_HOME'}; offline: {type(e).__name__}). "
            f'On a connected machine run `python -c "import open_clip; '
            f"open_clip.create_model_and_transforms('{arch}', pretrained='{pretrained}')\"` "
            "and copy its cache here, or pass a weights file path as the tag"
        ) from None
    return _frozen(model, device), open_clip.get_tokenizer(arch)


def marble_clip(spec: str) -> str | None:
    """The checkpoint name of a CLIP named "marble:NAME"; None for any other name."""
    return spec.removeprefix(MARBLE) if spec.startswith(MARBLE) else None


def clip_weights_digest(workspace: Workspace, spec: str) -> str | None:
    """The digest of a marble CLIP's weights (a retrained CLIP is another CLIP); None for a
    pretrained one, whose name fixes its weights. A missing checkpoint is a ClipModelError
    naming it."""
    name = marble_clip(spec)
    if name is None:
        return None
    try:
        return digest(workspace.checkpoint("clip", name))
    except ValueError as e:
        raise ClipModelError(f"CLIP {spec!r}: {e}") from None


def load_clip_embedder(workspace: Workspace, spec: str, device="cpu") -> tuple[ClipEmbedder, str]:
    """(embedder, its id) of "marble:NAME" (a marble CLIP checkpoint) or
    "openclip:ARCH:TAG_OR_FILE" (pretrained open_clip weights already on disk)."""
    name = marble_clip(spec)
    if name is not None:
        try:
            model, cfg = load_clip(workspace, name, device)
        except ValueError as e:
            raise ClipModelError(f"CLIP {spec!r}: {e}") from None
        return ClipEmbedder(model, make_tokenizer(cfg)), spec
    if spec.startswith(OPENCLIP):
        parts = spec.split(":", 2)
        if len(parts) != 3:
            raise ClipModelError(f"expected openclip:ARCH:TAG, got {spec!r}")
        model, tokenizer = load_pretrained_openclip(parts[1], parts[2], device)
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        mean = tuple(model.visual.image_mean or OPENAI_MEAN)
        std = tuple(model.visual.image_std or OPENAI_STD)
        return ClipEmbedder(model, tokenizer, size, mean, std), spec
    raise ClipModelError(f"a CLIP must be named openclip:ARCH:TAG or marble:NAME, got {spec!r}")
