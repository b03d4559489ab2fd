"""The settings of an evaluation sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.sampling import SAMPLERS

# the metrics a verdict is drawn on (evaluate/report.py)
VERDICT_METRICS = ("fid", "fd_clip", "cmmd", "clip_score", "attr_all_correct")


def parse_target_effect(text: str) -> tuple[str, float]:
    """ "METRIC=EFFECT" (e.g. "fid=2") as (metric, effect); a ValueError names the problem."""
    metric, _, effect = text.partition("=")
    try:
        number = float(effect)
    except ValueError:
        number = 0.0
    if metric not in VERDICT_METRICS or not number > 0:
        raise ValueError(
            f"a target effect is METRIC=EFFECT, METRIC one of {', '.join(VERDICT_METRICS)} "
            f"and EFFECT > 0; got {text!r}"
        )
    return metric, number


IMAGEN_GUIDANCE = (1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[str, ...] = ()  # diffusion checkpoint names; empty: every one there is
    data_variants: tuple[str, ...] = ()  # only models trained on these; empty: every one
    guidance_scales: tuple[float, ...] = IMAGEN_GUIDANCE
    sampler: str = "ddim"
    num_inference_steps: int = 25
    num_samples: int = 10_000  # images per point (FID-10K)
    prompt_set: Literal["auto", "val", "heldout"] = "auto"  # auto: heldout on built-in data
    judge: str = "marble:judge-clip-base"  # "marble:NAME" or "openclip:ARCH:TAG"
    fid_weights: str | None = None  # a weights file; default: tasks.evaluate.fid_weights' places
    bootstrap: int = 100  # replicates per interval
    batch_size: int = 250
    seed: int = 0  # of the bootstrap resamples
    device: str = "auto"
    # (metric, effect) pairs: the summary says how many replicates each effect would need
    target_effects: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be at least 2, got {self.num_samples}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {list(SAMPLERS)}")
        if not self.guidance_scales or min(self.guidance_scales) < 0:
            raise ValueError(f"guidance scales must be >= 0, got {self.guidance_scales}")
        if self.bootstrap < 1 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise ValueError("bootstrap, batch_size and num_inference_steps must be >= 1")
        for metric, effect in self.target_effects:
            if metric not in VERDICT_METRICS or not effect > 0:
                raise ValueError(
                    f"a target effect is METRIC=EFFECT with METRIC one of {VERDICT_METRICS} "
                    f"and EFFECT > 0, got {metric}={effect}"
                )
