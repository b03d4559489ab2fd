"""Measuring one point of an evaluation sweep (tasks/evaluate.py runs the sweep): sample,
extract features as images come off the sampler, and turn features into metrics with
bootstrap replicates, metric rows and per-image rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from eval.attributes import parse_caption
from eval.bootstrap import percentile_interval
from eval.clip_score import clip_scores
from eval.cmmd import CMMD_SCALE, CMMD_SIGMA, cmmd, mmd2_unbiased_resampled
from eval.detector import scene_matches
from eval.frechet import GaussianStats, frechet_distance
from eval.inception import inception_features
from tasks.plots import to_uint8


@dataclass(frozen=True)
class PointSettings:
    sampler: str
    num_inference_steps: int
    batch_size: int


def attribute_matches(images: np.ndarray, captions: list[str]) -> dict[str, list[bool]]:
    rows = [scene_matches(image, caption) for image, caption in zip(images, captions, strict=True)]
    return {f"attr_{k}": [r[k] for r in rows] for k in rows[0]}


def generate_and_measure(
    pipe,
    judge,
    inception,
    captions: list[str],
    seeds: list[int],
    guidance: float,
    settings: PointSettings,
    device,
) -> dict:
    """Images of one point, measured as they come off the sampler (no files in between):
    Inception features, judge embeddings, attribute matches (when the captions follow the
    built-in grammar), a grid of the first images, and the sampling speed."""
    parts: dict[str, list] = {"inception": [], "clip": [], "grid": []}
    builtin = parses(captions[0])
    matches: dict[str, list[bool]] = {}
    sample_s = 0.0
    for start in range(0, len(seeds), settings.batch_size):
        rows = slice(start, start + settings.batch_size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = pipe.generate(
                captions[rows], seeds[rows], guidance, settings.num_inference_steps,
                settings.sampler,
            )  # fmt: skip
        sample_s += time.perf_counter() - t0
        uint8 = to_uint8(images)
        parts["inception"].append(inception_features(inception, uint8, device))
        parts["clip"].append(judge.images(images).cpu().numpy())
        if start == 0:
            parts["grid"].append(uint8[:32])
        if builtin:
            for k, v in attribute_matches(uint8, captions[rows]).items():
                matches.setdefault(k, []).extend(v)
    return {
        "inception": np.concatenate(parts["inception"]).astype(np.float64),
        "clip": np.concatenate(parts["clip"]).astype(np.float64),
        "grid": parts["grid"][0],
        "matches": matches,
        "img_per_s": len(seeds) / max(sample_s, 1e-9),
    }


def parses(caption: str) -> bool:
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True


def point_metrics(
    out: dict, ref: dict, text_emb: np.ndarray, counts: np.ndarray
) -> dict[str, dict]:
    """value, replicates and interval of every metric of one point."""
    n = len(out["clip"])
    results: dict[str, dict] = {}
    for metric, feats, extractor in (
        ("fid", out["inception"], "inception"),
        ("fd_clip", out["clip"], "clip"),
    ):
        stats = GaussianStats.of(feats)
        value = frechet_distance(
            stats.mean, stats.covariance, ref[extractor]["mean"], ref[extractor]["cov"]
        )
        to_ref = ref[extractor]["to_ref"]
        reps = np.array([to_ref(feats, c) for c in counts])
        results[metric] = {"value": value, "replicates": reps, "extractor": extractor}
    results["cmmd"] = {
        "value": cmmd(out["clip"], ref["clip"]["embeddings"]),
        "replicates": CMMD_SCALE
        * mmd2_unbiased_resampled(out["clip"], ref["clip"]["embeddings"], CMMD_SIGMA, counts),
        "extractor": "clip",
    }
    per_image = {"clip_score": clip_scores(out["clip"], text_emb)}
    per_image |= {k: np.asarray(v, dtype=np.float64) for k, v in out["matches"].items()}
    for metric, values in per_image.items():
        results[metric] = {
            "value": float(values.mean()),
            "replicates": counts @ values / n,
            "extractor": "clip" if metric == "clip_score" else "detector",
            "per_image": values,
        }
    return results


def metric_rows(
    metrics: dict[str, dict], meta: dict, run_id: str | None, img_per_s: float | None
) -> list[dict]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for metric, m in metrics.items():
        low, high = percentile_interval(m["replicates"])
        rows.append(meta | {
            "metric": metric, "value": float(m["value"]), "ci_low": low, "ci_high": high,
            "replicates": [float(r) for r in m["replicates"]], "extractor": m["extractor"],
            "mlflow_run_id": run_id, "img_per_s": img_per_s, "timestamp": now,
        })  # fmt: skip
    return rows


def sample_columns(meta: dict, prompts, metrics: dict[str, dict]) -> dict[str, list]:
    """A row per generated image: its point, prompt (pair_id, caption), seed and scores."""
    n = len(prompts.captions)
    columns = {
        "sweep_id": [meta["sweep_id"]] * n, "point_id": [meta["point_id"]] * n,
        "model": [meta["model"]] * n, "guidance_scale": [meta["guidance_scale"]] * n,
        "pair_id": prompts.pair_ids, "caption": prompts.captions, "seed": prompts.seeds,
        "repeat": prompts.repeats,
    }  # fmt: skip
    columns |= {k: m["per_image"].tolist() for k, m in metrics.items() if "per_image" in m}
    return columns
