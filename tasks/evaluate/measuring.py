"""What every point of a sweep is measured with, and what names a point's inputs.

`build_measuring` loads the judge and the FID Inception, draws the prompts and computes the
reference statistics once per process; `inputs_key` is the digest a point's rows are
stored under, so a point evaluated before with the same inputs is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from eval.bootstrap import resample_counts
from eval.clip_embedder import ClipEmbedder
from eval.inception import build_fid_inception
from tasks.evaluate.fid_weights import load_fid_state_dict
from tasks.evaluate.point import batched, reference_statistics
from tasks.evaluate.prompts import Prompts, build_prompts
from tasks.evaluate.spec import SweepSpec
from tasks.runtime.devices import pick_device
from tasks.store.checkpoint import load_config
from tasks.store.digests import json_digest
from tasks.store.loaders import load_clip_embedder
from tasks.store.workspace import DEFAULT_VARIANT, Workspace


@dataclass(frozen=True)
class Measuring:
    """What every point of a sweep is measured with: built once per process (the judge and
    Inception loaded, the reference statistics and prompt embeddings computed) and reused by
    each point evaluated there."""

    spec: SweepSpec
    prompts: Prompts
    common: dict  # the columns every row of the sweep carries
    judge: ClipEmbedder
    inception: torch.nn.Module
    device: torch.device
    reference: dict  # extractor -> statistics of the real images (point.reference_statistics)
    text_emb: np.ndarray  # (N, D) the judge's embedding of each prompt
    counts: np.ndarray  # (B, N) bootstrap resample counts, the same at every point
    done: dict[str, list[dict]]  # rows evaluated before, by inputs key
    code: str  # digest of the measuring code


def inputs_key(m: Measuring, point: dict, guidance: float | None) -> str:
    """What a point's (or a reconstruction's) rows depend on: the checkpoints, the sampling
    and measuring settings, the prompts, the judge and FID weights, and this code."""
    spec, common = m.spec, m.common
    return json_digest({
        "point": {k: v for k, v in point.items() if k.endswith("_digest") or k == "model"},
        "guidance": guidance, "sampler": spec.sampler, "steps": spec.num_inference_steps,
        "n": spec.num_samples, "bootstrap": spec.bootstrap, "seed": spec.seed,
        "prompts": m.prompts.digest, "judge": common["judge_digest"],
        "fid_weights": common["fid_weights_digest"], "code": m.code,
    })  # fmt: skip


def evaluated_rows(workspace: Workspace) -> dict[str, list[dict]]:
    """Rows of every point evaluated before, by inputs key (rows written before keys existed
    are left out)."""
    done: dict[str, list[dict]] = {}
    for path in (
        sorted(workspace.evaluations.glob("*.parquet")) if workspace.evaluations.is_dir() else []
    ):
        for row in pq.read_table(path).to_pylist():
            if row.get("inputs_key"):
                done.setdefault(row["inputs_key"], []).append(row)
    return done


def build_measuring(spec: SweepSpec, workspace: Workspace, common: dict, code: str) -> Measuring:
    """Load and compute what the sweep's points are measured with; `code` digests the
    measuring code (a point is evaluated again when it changes)."""
    device = pick_device(spec.device)
    judge, _ = load_clip_embedder(workspace, spec.judge, device)
    state, _ = load_fid_state_dict(Path(spec.fid_weights) if spec.fid_weights else None)
    inception = build_fid_inception(state).to(device)
    prompts = build_prompts(workspace, spec.prompt_set, spec.num_samples)
    return Measuring(
        done=evaluated_rows(workspace), code=code,
        spec=spec, prompts=prompts, common=common, judge=judge,
        inception=inception, device=device,
        reference=reference_statistics(
            workspace.cache / "reference", prompts, judge, common["judge_digest"], inception,
            common["fid_weights_digest"], device,
        ),
        text_emb=batched(judge.texts, prompts.captions, spec.batch_size),
        counts=resample_counts(spec.num_samples, spec.bootstrap, spec.seed),
    )  # fmt: skip


def resolve_models(
    workspace: Workspace, names: tuple[str, ...], variants: tuple[str, ...] = ()
) -> list[str]:
    """The diffusion models to evaluate: `names`, or every one there is; of those, the ones
    trained on one of `variants` (data variants; empty: any)."""
    folder = workspace.checkpoints / "diffusion"
    found = (
        sorted(p.name for p in folder.iterdir() if (p / "config.json").exists())
        if folder.is_dir()
        else []
    )
    if not found:
        raise ValueError(f"no diffusion checkpoints in {folder}; train the grid first")
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ValueError(
            f"unknown diffusion model(s) {', '.join(unknown)}; found: {', '.join(found)}"
        )
    models = list(names) or found
    if variants:
        variant = {m: load_config(folder / m).get("data_variant", DEFAULT_VARIANT) for m in models}
        models = [m for m in models if variant[m] in variants]
        if not models:
            raise ValueError(
                f"no diffusion model trained on data variant(s) {', '.join(variants)}; "
                f"found: {', '.join(f'{m} ({v})' for m, v in variant.items())}"
            )
    return models
