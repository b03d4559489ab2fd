"""Offline and privacy defaults, applied when `tasks` (and so `flows`) is imported.

Each is a default: a value the user already set in the environment wins. The switches
come from ../shared/ENVIRONMENT.md (measured): without them Prefect, MLflow, albumentations
(via img2dataset) and the Hugging Face hub try to reach the internet.
"""

from __future__ import annotations

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
