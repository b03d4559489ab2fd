"""Checkpoints on disk: the folder format, read and written.

A checkpoint is a folder `checkpoints/<kind>/<name>/` (`Workspace.checkpoint`) holding

    <module>.safetensors   weights of each module (model, ema)
    config.json            everything needed to rebuild the modules
    state.pt               optimizer, scheduler, step, RNG states, MLflow run id
                           (torch.save; loaded with weights_only=True)

The folder is written to a temporary sibling and renamed into place (tasks.store.workspace),
so a kill at any moment leaves either the previous checkpoint or the new one.
The loaders that rebuild trained models from checkpoints are in store/loaders.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tasks.store.digests import file_digest
from tasks.store.files import atomic_dir


class CheckpointNotFoundError(ValueError):
    """A checkpoint that a stage needs is not in the workspace."""


# ---------------------------------------------------------------------------- the folder format


def save_checkpoint(
    ckpt_dir: Path,
    weights: dict[str, dict[str, Tensor]],
    config: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """weights: a state dict per module name (model, ema), each written to <name>.safetensors."""
    with atomic_dir(ckpt_dir) as tmp:
        for name, tensors in weights.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(tensors, tmp / f"{name}.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        torch.save(state, tmp / "state.pt")


def load_config(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads(_config_path(ckpt_dir).read_text())


def _config_path(ckpt_dir: Path) -> Path:
    """config.json of a checkpoint; one clear error naming what is there when it is missing."""
    path = Path(ckpt_dir) / "config.json"
    if not path.exists():
        kind_dir = path.parent.parent
        found = []
        if kind_dir.is_dir():
            found = sorted(p.name for p in kind_dir.iterdir() if (p / "config.json").exists())
        raise CheckpointNotFoundError(
            f"no {kind_dir.name} checkpoint {path.parent.name!r} in {kind_dir} "
            f"(found: {', '.join(found) or 'none'}); train it first"
        )
    return path


def load_weights(ckpt_dir: Path, module: nn.Module, name: str = "model") -> nn.Module:
    """Load `<name>.safetensors` into `module` (strict: every key must match)."""
    module.load_state_dict(read_weights(ckpt_dir, name))
    return module


def read_weights(ckpt_dir: Path, name: str = "model") -> dict[str, Tensor]:
    """The tensors of `<name>.safetensors`, by state-dict key."""
    return load_file(Path(ckpt_dir) / f"{name}.safetensors")


def load_state(ckpt_dir: Path) -> dict[str, Any] | None:
    path = Path(ckpt_dir) / "state.pt"
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)


def digest(ckpt_dir: Path, name: str = "ema") -> str:
    """sha1 of a checkpoint's weights file (first 16 hex): the key of anything derived from it."""
    path = Path(ckpt_dir) / f"{name}.safetensors"
    if not path.exists():
        path = _config_path(ckpt_dir)  # weightless (identity autoencoder)
    return file_digest(path)[:16]


def dataclass_from_json(cls, values: dict[str, Any]):
    """Rebuild a frozen config dataclass from JSON (lists back to tuples; unknown keys raise)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class CheckpointDir:
    """One checkpoint folder, as the training loop reads and writes it (tasks.train.trainer)."""

    path: Path

    def state(self) -> dict[str, Any] | None:
        return load_state(self.path)

    def load(self, module: nn.Module, name: str) -> None:
        load_weights(self.path, module, name)

    def save(
        self, modules: dict[str, nn.Module], config: dict[str, Any], state: dict[str, Any]
    ) -> None:
        save_checkpoint(self.path, {k: m.state_dict() for k, m in modules.items()}, config, state)
