"""The trainers by kind: for each training kind ("autoencoder", "clip", "diffusion"), its spec
class and the function that trains one spec. Whatever picks a trainer by name (the train
flow, `marble train`, every torchrun rank) looks it up here, so a kind is added in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.train import autoencoder, clip, diffusion


@dataclass(frozen=True)
class Trainer:
    """One training kind: `train(spec(...), workspace)` returns the training's summary."""

    spec: type
    train: Callable[..., dict]


TRAINERS: dict[str, Trainer] = {
    autoencoder.KIND: Trainer(autoencoder.AutoencoderTrainSpec, autoencoder.train_autoencoder),
    clip.KIND: Trainer(clip.ClipTrainSpec, clip.train_clip),
    diffusion.KIND: Trainer(diffusion.DiffusionTrainSpec, diffusion.train_diffusion),
}
KINDS = tuple(TRAINERS)  # ("autoencoder", "clip", "diffusion")
