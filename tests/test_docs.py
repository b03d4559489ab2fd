"""The documentation's numbers that code defines: a drift between them fails here."""

from __future__ import annotations

import re
from pathlib import Path

from models.autoencoder import PARAM_COUNTS as AE_COUNTS
from models.clip import PARAM_COUNTS as CLIP_COUNTS
from models.unet import PARAM_COUNTS as UNET_COUNTS

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<name>[\w.-]+)` \|.*\| (?P<count>[\d,]+) \|$")


def test_parameter_counts_in_docs_models_are_the_code_s():
    documented = {}
    for line in (REPO / "docs" / "models.md").read_text().splitlines():
        if m := ROW.match(line.strip()):
            documented[m["name"]] = int(m["count"].replace(",", ""))
    assert documented == {**AE_COUNTS, **CLIP_COUNTS, **UNET_COUNTS}


def test_readme_stays_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 220
    for page in ("models", "training", "filter", "performance", "data"):
        assert (REPO / "docs" / f"{page}.md").exists(), page
