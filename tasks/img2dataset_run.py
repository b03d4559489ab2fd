"""Run img2dataset with keyword arguments read from a JSON file.

    python -m tasks.img2dataset_run ARGS.json

Ingest downloads in a process of its own (this one), started with an environment that sends
every fetch through the vetting proxy (tasks/fetch_proxy.py); img2dataset's workers inherit
it. marble's own process, and its own HTTP clients, keep their environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(args_path: str) -> None:
    import img2dataset  # heavy (wandb, albumentations, cv2)

    img2dataset.download(**json.loads(Path(args_path).read_text()))


if __name__ == "__main__":  # img2dataset's workers are spawned: they import this module
    main(sys.argv[1])
