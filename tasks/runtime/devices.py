"""The compute device a stage runs on, chosen by name."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """ "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"; anything else, or a
    CUDA device this machine does not have, is refused by name."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use cpu or auto"
        )
    return device
