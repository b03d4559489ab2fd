"""Checkpoints: `checkpoints/<kind>/<name>/` with

    <module>.safetensors   weights of each module (e.g. model, ema)
    config.json            everything needed to rebuild the modules
    state.pt               optimizer, scheduler, step, RNG states, MLflow run id
                           (torch.save; loaded with weights_only=True)

The folder is written to a temporary sibling and renamed into place (tasks.workspace),
so a kill at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.workspace import atomic_dir


def save_checkpoint(
    ckpt_dir: Path, modules: dict[str, nn.Module], config: dict[str, Any], state: dict[str, Any]
) -> None:
    with atomic_dir(ckpt_dir) as tmp:
        for name, module in modules.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, tmp / f"{name}.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        torch.save(state, tmp / "state.pt")


def load_config(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir} (config.json missing)")
    return json.loads(path.read_text())


def load_weights(ckpt_dir: Path, module: nn.Module, name: str = "model") -> nn.Module:
    """Load `<name>.safetensors` into `module` (strict: every key must match)."""
    module.load_state_dict(load_file(Path(ckpt_dir) / f"{name}.safetensors"))
    return module


def load_state(ckpt_dir: Path) -> dict[str, Any] | None:
    path = Path(ckpt_dir) / "state.pt"
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)


def digest(ckpt_dir: Path, name: str = "ema") -> str:
    """sha1 of a checkpoint's weights file (first 16 hex): the key of anything derived from it."""
    path = Path(ckpt_dir) / f"{name}.safetensors"
    if not path.exists():
        path = Path(ckpt_dir) / "config.json"  # weightless (identity autoencoder)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dataclass_from_json(cls, values: dict[str, Any]):
    """Rebuild a frozen config dataclass from JSON (lists back to tuples; unknown keys raise)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
