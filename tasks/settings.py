"""Process defaults, applied when `tasks` (and so `flows`) is imported: offline and
privacy switches, and glibc malloc's thresholds.

Each is a default: a value the user already set in the environment wins. The switches
come from ../shared/ENVIRONMENT.md (measured): without them Prefect, MLflow, albumentations
(via img2dataset) and the Hugging Face hub try to reach the internet.
"""

from __future__ import annotations

import ctypes
import os

OFFLINE_DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "true",  # Prefect client events; MLflow telemetry (needs the word)
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",  # pretrained open_clip weights only from the local cache
    "WANDB_MODE": "disabled",  # img2dataset imports wandb
    "WANDB_SILENT": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 2 busy cores start slowly
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    "GIT_PYTHON_REFRESH": "quiet",  # mlflow probes git
}


def apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


# glibc's malloc keeps freed memory for the next allocation, up to 1 GiB. By default it maps
# each block above a threshold (128 KiB, rising with use to 32 MiB at most) afresh and hands
# a freed heap top above 128 KiB back to the kernel, so torch's big CPU tensors are faulted
# in page by page at every step: the FID Inception's activations of a batch of 50 are
# 276 MiB, and one `make run` evaluation took 15 million page faults and 31 s of kernel
# time (docs/performance.md, "glibc's malloc keeps what torch frees"). Set in the
# environment, they reach every process marble starts (glibc reads them as a process
# starts); `mallopt` sets them in this one.
MALLOC_DEFAULTS: dict[str, int] = {
    "MALLOC_MMAP_THRESHOLD_": 1 << 30,
    "MALLOC_TRIM_THRESHOLD_": 1 << 30,
}
_MALLOPT_PARAMETERS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # malloc.h


def uses_glibc() -> bool:
    """Whether this process's C library is glibc."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or not this name: not glibc
        return False


def apply_malloc_defaults() -> None:
    """Each of MALLOC_DEFAULTS the user has not set, for this process and its children; only
    where the C library is glibc (others read neither the variables nor these parameters)."""
    if not uses_glibc():
        return
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for key, value in MALLOC_DEFAULTS.items():
        if key not in os.environ and mallopt(_MALLOPT_PARAMETERS[key], value) == 1:
            os.environ[key] = str(value)
