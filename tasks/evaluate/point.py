"""Measuring for an evaluation sweep (tasks/evaluate/sweep.py runs it): one point (sample, extract
features as images come off the sampler, turn them into metrics with bootstrap replicates,
metric rows and per-image rows), and the reference side (cached statistics of the real
images, where real images stand with the judge, reconstructions of them)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from eval.attributes import parse_caption
from eval.bootstrap import centred_interval, resample_counts
from eval.clip_score import clip_scores
from eval.cmmd import CMMD_SCALE, CMMD_SIGMA, cmmd, mmd2_unbiased_resampled
from eval.detector import scene_matches
from eval.frechet import FrechetToReference, GaussianStats
from eval.inception import inception_features
from eval.retrieval import recall_at_1
from tasks.runtime.progress import report
from tasks.store.digests import json_digest
from tasks.store.files import atomic_file
from tasks.store.images import to_float, to_uint8


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
        bf16 = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"
        )
        with torch.inference_mode(), bf16:  # the U-Net in bf16 on a GPU; the sampler in fp32
            images = pipe.generate(
                captions[rows], seeds[rows], guidance, settings.num_inference_steps,
                settings.sampler,
            ).float()  # fmt: skip
        sample_s += time.perf_counter() - t0
        report(
            f"sample guidance {guidance:g}",
            min(start + settings.batch_size, len(seeds)),
            len(seeds),
        )
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
    out: dict,
    ref: dict,
    text_emb: np.ndarray,
    counts: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray],
) -> dict[str, dict]:
    """value, replicates and interval of every metric of one point. `groups`: the prompt
    labels of the samples and of the reference images (Prompts.groups): the samples are
    drawn from the reference's prompts, so CMMD leaves out the pairs that share one."""
    n = len(out["clip"])
    results: dict[str, dict] = {}
    for metric, feats, extractor in (
        ("fid", out["inception"], "inception"),
        ("fd_clip", out["clip"], "clip"),
    ):
        to_ref = ref[extractor]["to_ref"]
        reps = np.array([to_ref(feats, c) for c in counts])
        results[metric] = {"value": to_ref(feats), "replicates": reps, "extractor": extractor}
    results["cmmd"] = _cmmd_metric(out["clip"], ref["clip"]["embeddings"], counts, groups)
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


def _cmmd_metric(samples, reference, counts, groups) -> dict:
    """CMMD of samples (N, D) against reference (M, D) with its bootstrap replicates over
    the samples; groups: (sample labels, reference labels), or None for independent sets."""
    x_groups, y_groups = groups if groups is not None else (None, None)
    return {
        "value": cmmd(samples, reference, x_groups=x_groups, y_groups=y_groups),
        "replicates": CMMD_SCALE
        * mmd2_unbiased_resampled(
            samples, reference, CMMD_SIGMA, counts, x_groups=x_groups, y_groups=y_groups
        ),
        "extractor": "clip",
    }


def metric_bounds(metric: str) -> tuple[float, float]:
    """The range a metric's value can take: proportions in [0, 1], CLIP score in [0, 100],
    Fréchet distances >= 0; unbounded CMMD (unbiased MMD² can be below 0)."""
    if metric.startswith("attr_"):
        return 0.0, 1.0
    if metric.startswith("clip_score"):
        return 0.0, 100.0
    if metric in ("fid", "fd_clip"):
        return 0.0, np.inf
    return -np.inf, np.inf


def metric_rows(
    metrics: dict[str, dict], meta: dict, run_id: str | None, img_per_s: float | None
) -> list[dict]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    for metric, m in metrics.items():
        low, high = centred_interval(m["value"], m["replicates"], bounds=metric_bounds(metric))
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


# ---------------------------------------------------------------------------- reference side


def cached(folder: Path, key_parts: dict, compute) -> dict[str, np.ndarray]:
    """Arrays computed once and kept in folder/<extractor>-<key>.npz, key = sha1 of key_parts."""
    key = json_digest(key_parts)
    path = folder / f"{key_parts['extractor']}-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    arrays = compute()
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays


def batched(fn, items, batch: int) -> np.ndarray:
    return np.concatenate(
        [fn(items[i : i + batch]).cpu().numpy() for i in range(0, len(items), batch)]
    ).astype(np.float64)


def reference_statistics(
    folder: Path, prompts, judge, judge_digest: str, inception, fid_digest: str, device
) -> dict:
    """Statistics of the real images per extractor, cached in `folder` and keyed by the
    data's digest, the extractor's weights, the resolution and N."""
    base = {
        "data": prompts.digest,
        "resolution": int(prompts.reference.shape[1]),
        "n": len(prompts.reference),
    }

    def inception_stats():
        stats = GaussianStats.of(inception_features(inception, prompts.reference, device))
        return {"mean": stats.mean, "cov": stats.covariance}

    def clip_stats():
        embeddings = batched(lambda b: judge.images(to_float(b)), prompts.reference, 250)
        stats = GaussianStats.of(embeddings)
        return {"mean": stats.mean, "cov": stats.covariance, "embeddings": embeddings}

    reference = {
        "inception": cached(
            folder, base | {"extractor": "inception", "weights": fid_digest}, inception_stats
        ),
        "clip": cached(folder, base | {"extractor": "clip", "weights": judge_digest}, clip_stats),
    }
    for stats in reference.values():  # the reference side of every bootstrap replicate
        stats["to_ref"] = FrechetToReference(stats["mean"], stats["cov"])
    return reference


def reference_rows(
    judge, prompts, reference: dict, common: dict, seed: int, replicates: int
) -> list[dict]:
    """Where real images stand with the judge: its retrieval R@1 on them, their CLIP score
    with their own captions (the ceiling) and with shuffled captions (the floor)."""
    images = reference["clip"]["embeddings"]
    texts = batched(judge.texts, prompts.reference_captions, 250)
    recall = recall_at_1(images, texts, prompts.reference_captions)
    order = np.random.default_rng(seed).permutation(len(texts))
    counts = resample_counts(len(texts), replicates, seed)
    metrics = {}
    for name, scores in (
        ("clip_score_real", clip_scores(images, texts)),
        ("clip_score_shuffled", clip_scores(images, texts[order])),
    ):
        metrics[name] = {
            "value": float(scores.mean()),
            "replicates": counts @ scores / len(scores),
            "extractor": "clip",
        }
    metrics |= {
        f"judge_{k}": {"value": v, "replicates": np.array([v]), "extractor": "clip"}
        for k, v in recall.items()
    }
    meta = common | {
        "point_id": "reference",
        "model": "reference",
        "n": len(texts),
        "guidance_scale": None,
    }
    return metric_rows(metrics, meta, None, None)


def floor_metrics(
    floor,
    judge,
    inception,
    device,
    counts: np.ndarray,
    folder: Path,
    keys: dict,
    reference: dict | None = None,
) -> dict[str, dict]:
    """fid, fd_clip and cmmd of the floor's second real set against its first (prompts.
    RealSets), with bootstrap replicates over the second set as a point's are over its
    samples: what a generator that draws from the data itself scores at this N. Features
    are cached in `folder` under `keys` (the data, the extractors' weights). `reference`:
    the sweep's reference statistics, used for the first set when it is the reference."""

    def features(images: np.ndarray, extractor: str):
        def compute():
            if extractor == "inception":
                return {"features": inception_features(inception, images, device)}
            return {"features": batched(lambda b: judge.images(to_float(b)), images, 250)}

        which = keys | {"extractor": extractor, "images": images.shape, "set": id_of(images)}
        return cached(folder, which, compute)["features"].astype(np.float64)

    def to_first(extractor: str) -> FrechetToReference:
        if reference is not None:
            return reference[extractor]["to_ref"]
        stats = GaussianStats.of(features(floor.first, extractor))
        return FrechetToReference(stats.mean, stats.covariance)

    metrics = {}
    for metric, extractor in (("fid", "inception"), ("fd_clip", "clip")):
        second = features(floor.second, extractor)
        to_ref = to_first(extractor)
        metrics[metric] = {
            "value": to_ref(second),
            "replicates": np.array([to_ref(second, c) for c in counts]),
            "extractor": extractor,
        }
    groups = None
    if floor.paired:
        labels: dict[str, int] = {}
        groups = (
            np.array([labels.setdefault(p, len(labels)) for p in floor.second_ids]),
            np.array([labels.setdefault(p, len(labels)) for p in floor.first_ids]),
        )
    first_clip = (
        reference["clip"]["embeddings"] if reference is not None else features(floor.first, "clip")
    )
    metrics["cmmd"] = _cmmd_metric(features(floor.second, "clip"), first_clip, counts, groups)
    return metrics


def id_of(images: np.ndarray) -> str:
    """A digest of an image set's pixels (a cache key)."""
    return hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def reconstruction_metrics(
    images: torch.Tensor, psnr: np.ndarray, inception, judge, reference: dict, counts, device
) -> dict[str, dict]:
    """rFID, fd_clip and PSNR of reconstructions (N, 3, H, W) in [-1, 1] of the reference
    images, against the reference statistics; per-image PSNR (N,) given."""
    features = {
        "inception": inception_features(inception, to_uint8(images), device),
        "clip": judge.images(images).cpu().numpy().astype(np.float64),
    }
    metrics = {}
    for metric, extractor in (("rfid", "inception"), ("rfd_clip", "clip")):
        to_ref = reference[extractor]["to_ref"]
        metrics[metric] = {
            "value": to_ref(features[extractor]),
            "replicates": np.array([to_ref(features[extractor], c) for c in counts]),
            "extractor": extractor,
        }
    values = np.minimum(psnr, 100.0)  # identical images (the identity autoencoder): capped
    metrics["psnr"] = {
        "value": float(values.mean()),
        "replicates": counts @ values / len(values),
        "extractor": "pixels",
    }
    return metrics
