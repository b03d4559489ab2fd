"""CLIP-similarity filtering: score every raw pair, keep the ones whose caption fits.

    filter_pairs(FilterConfig(model=...), workspace) -> summary dict

Filter model, by `FilterConfig.model`:
- "openclip:<architecture>:<pretrained tag or weights file>": a pretrained open_clip model
  whose weights are already on disk (the user's cache, or a file path); offline with no
  weights it raises an error naming what was looked for and how to get it.
- "marble:<checkpoint name>": a CLIP trained by marble (checkpoints/clip/<name>/), such as
  the filter CLIP that the `filter` flow trains on the raw pairs first
  (`tasks.train.clip.filter_clip_spec`) when the user names no model.

Keep rule, by `FilterConfig.keep`: a name in `tasks.filter.keep_rules.KEEP_RULES`.

Writes, each atomically (temporary folder, then rename):
- data/scores/scores.parquet: pair_id, caption, similarity, filter_model, kept,
  content_group, duplicate_of, for every raw row (failed downloads have no image:
  similarity and content_group null, kept false);
- data/pairs/pairs-NNNNN.parquet: kept rows: pair_id, caption, png, width, height, split
  (train / val, a function of the picture's content group, val ≈ 5 %).

A pair is kept when its similarity clears the keep rule's cut and it is not a duplicate (the
same pixels and caption as an earlier pair; `tasks.store.content`); the cut is fitted to
the similarities of the pairs that are not duplicates.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from eval import clip_embedder
from eval.clip_embedder import ClipEmbedder
from tasks.filter import keep_rules
from tasks.filter.keep_rules import KEEP_RULES
from tasks.runtime.devices import pick_device
from tasks.store import content
from tasks.store.digests import files_digest, json_digest, source_digest
from tasks.store.files import atomic_dir
from tasks.store.loaders import clip_weights_digest, load_clip_embedder
from tasks.store.pairs import (
    ParquetPairs,
    pairs_table,
    raw_content_plan,
    shard_paths,
    write_pairs,
)
from tasks.store.stages import recorded, write_record
from tasks.store.tracking import Tracker
from tasks.store.workspace import Workspace

KeepRule = Literal[tuple(KEEP_RULES)]


@dataclass(frozen=True)
class FilterConfig:
    model: str  # "openclip:ARCH:TAG_OR_FILE" or "marble:NAME" (tasks.store.checkpoint)
    keep: KeepRule = "mixture"
    threshold: float = 0.28  # for keep="threshold"
    top_fraction: float = 0.3  # for keep="top_fraction"
    val_fraction: float = 0.05
    batch_size: int = 256
    workers: int = 2  # DataLoader processes decoding images
    device: str = "auto"

    def __post_init__(self):
        if self.keep not in KEEP_RULES:
            raise ValueError(f"unknown keep rule {self.keep!r}; choose from {list(KEEP_RULES)}")


# ---------------------------------------------------------------------------- scoring


def score_raw_pairs(
    scorer: ClipEmbedder, raw_dir: Path, cfg: FilterConfig, shards: list[Path] | None = None
) -> dict[str, float]:
    """pair_id -> cosine similarity for every successfully downloaded raw pair (of `shards`
    only, when given). Inside a daemonic process (a Dask worker) images are decoded in
    this process: daemons cannot start DataLoader workers."""
    dataset = ParquetPairs(raw_dir, shards=shards)
    workers = 0 if multiprocessing.current_process().daemon else cfg.workers
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=workers, shuffle=False)
    scores: dict[str, float] = {}
    for images, captions, ids in loader:
        for pid, s in zip(ids, scorer(images, list(captions)).tolist(), strict=True):
            scores[pid] = s
    return scores


@functools.lru_cache(maxsize=1)
def _scorer(workspace: Workspace, model: str, device: str, weights: str) -> tuple:
    """The filter model, loaded once per process for a sequence of shards (`weights`, the
    checkpoint's digest, keys the cache: a retrained marble CLIP is loaded again)."""
    return load_clip_embedder(workspace, model, pick_device(device))


def _weights_key(workspace: Workspace, model: str) -> str:
    return clip_weights_digest(workspace, model) or model


def score_shard(cfg: FilterConfig, shard: Path, workspace: Workspace) -> dict[str, float]:
    """pair_id -> similarity for the pairs of one raw shard: the unit of work that fans out
    (one Prefect task each; on Dask, one worker each)."""
    scorer, _ = _scorer(workspace, cfg.model, cfg.device, _weights_key(workspace, cfg.model))
    return score_raw_pairs(scorer, workspace.raw, cfg, shards=[shard])


ShardScorer = Callable[[list[Path]], list[dict[str, float]]]


def filter_pairs(
    cfg: FilterConfig, workspace: Workspace, log=print, score_shards: ShardScorer | None = None
) -> dict:
    """Score, keep, write; one filter at a time per workspace.

    score_shards(shards) -> one {pair_id: similarity} per shard, in order: how the shards are
    scored (the flow fans them out over its task runner); default: each in turn, here."""
    with workspace.lock("filter"):
        return _filter_pairs(cfg, workspace, log, score_shards)


def _inputs(cfg: FilterConfig, workspace: Workspace, shards: list[Path]) -> str:
    """Digest of everything the filter's output depends on: the raw shards, the filter
    model's weights, the settings that change the result, and this code."""
    weights = clip_weights_digest(workspace, cfg.model)
    model = cfg.model if weights is None else f"{cfg.model}:{weights}"
    settings = {
        k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "workers", "device")
    }
    code = source_digest(sys.modules[__name__], keep_rules, clip_embedder, content)
    return json_digest(
        {"raw": files_digest(shards), "model": model, "settings": settings, "code": code}
    )


def _filter_pairs(cfg: FilterConfig, workspace: Workspace, log, score_shards) -> dict:
    t0 = time.perf_counter()
    shards = shard_paths(workspace.raw)
    weights = _weights_key(workspace, cfg.model)
    _, model_id = _scorer(workspace, cfg.model, cfg.device, weights)  # a bad name: here
    inputs = _inputs(cfg, workspace, shards)
    done = recorded(workspace.scores, inputs) if workspace.pairs.is_dir() else None
    if done is not None:
        log(f"filter: skipped, {done['skipped']}")
        return done
    if score_shards is None:
        score_shards = lambda paths: [score_shard(cfg, p, workspace) for p in paths]  # noqa: E731
    t_score = time.perf_counter()
    parts = score_shards(shards)
    score_s = time.perf_counter() - t_score
    scores = {pid: sim for part in parts for pid, sim in part.items()}
    plan = raw_content_plan(workspace.raw, cfg.val_fraction)
    at = {pid: k for k, pid in enumerate(plan.pair_ids)}
    sims = np.array([scores[p] for p in plan.unique_ids()])
    threshold = KEEP_RULES[cfg.keep](sims, cfg)

    raw = pa.concat_tables(pq.read_table(s) for s in shards)
    raw_ids = raw["pair_id"].to_pylist()
    similarity = pa.array([scores.get(pid) for pid in raw_ids], pa.float64())
    duplicate_of = pa.array(
        [plan.duplicate_of[at[p]] if p in at else None for p in raw_ids], pa.string()
    )
    kept = pc.and_(
        pc.fill_null(pc.greater_equal(similarity, threshold), False), pc.is_null(duplicate_of)
    )
    score_table = pa.table(
        {
            "pair_id": raw["pair_id"],
            "caption": raw["caption"],
            "similarity": similarity,
            "filter_model": pa.array([model_id] * raw.num_rows, pa.string()),
            "kept": kept,
            "content_group": pa.array(
                [plan.group[at[p]] if p in at else None for p in raw_ids], pa.string()
            ),
            "duplicate_of": duplicate_of,
        }
    )
    kept_rows = raw.filter(kept)
    pairs = pairs_table(kept_rows, [plan.split[at[p]] for p in kept_rows["pair_id"].to_pylist()])
    summary = {
        "filter_model": model_id,
        "keep_rule": cfg.keep,
        "threshold": threshold,
        "val_fraction": cfg.val_fraction,  # the data variants split as the kept pairs do
        "scored": len(scores),
        "kept": pairs.num_rows,
        "dropped": len(scores) - pairs.num_rows,
        **{k: v for k, v in plan.counts().items() if k != "images"},
        "pairs_per_s": round(len(scores) / score_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    # the cut's quality on the built-in truth: duplicates are dropped for being copies
    summary |= ground_truth_metrics(workspace, score_table.filter(pc.is_null(duplicate_of)))
    with atomic_dir(workspace.pairs) as tmp:
        write_pairs(pairs, tmp)
    with atomic_dir(workspace.scores) as tmp:  # last, with the record: complete means both
        pq.write_table(score_table, tmp / "scores.parquet")
        write_record(tmp, inputs, summary)
    _log_to_mlflow(workspace, summary, sims, threshold)
    log(
        f"filter: kept {summary['kept']} of {summary['scored']} at similarity >= "
        f"{threshold:.3f}; {summary['duplicates']} duplicates dropped, "
        f"{summary['pairs_in_shared_groups']} pairs share a picture group with another"
    )
    return summary


def ground_truth_metrics(workspace: Workspace, scores: pa.Table) -> dict[str, float]:
    """On the built-in data: how well dropping matches the wrong captions (truth.parquet)."""
    truth_path = workspace.source / "truth.parquet"
    if not truth_path.exists():
        return {}
    truth = pq.read_table(truth_path, columns=["pair_id", "caption_is_wrong"]).to_pydict()
    is_wrong = dict(zip(truth["pair_id"], truth["caption_is_wrong"], strict=True))
    columns = (scores[c].to_pylist() for c in ("pair_id", "similarity", "kept"))
    scored = [
        (is_wrong[p], k)
        for p, s, k in zip(*columns, strict=True)
        if p in is_wrong and s is not None
    ]
    if not scored:
        return {}
    wrong = sum(w for w, _ in scored)
    right = len(scored) - wrong
    dropped_wrong = sum(w and not k for w, k in scored)
    kept_right = sum((not w) and k for w, k in scored)
    dropped = sum(not k for _, k in scored)
    return {
        "wrong_dropped_recall": dropped_wrong / wrong if wrong else 1.0,
        "drop_precision": dropped_wrong / dropped if dropped else 1.0,
        "right_kept": kept_right / right if right else 1.0,
    }


def _log_to_mlflow(workspace: Workspace, summary: dict, sims: np.ndarray, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sims[sims >= threshold], bins=60, alpha=0.7, label="kept")
    ax.hist(sims[sims < threshold], bins=60, alpha=0.7, label="dropped")
    ax.axvline(threshold, color="k", lw=0.8)
    ax.set_xlabel("CLIP cosine similarity (image, caption)")
    ax.set_ylabel("pairs")
    ax.legend()
    fig.tight_layout()
    with Tracker(workspace, "marble-filter", "filter") as t:
        t.log_params({k: v for k, v in summary.items() if isinstance(v, str)})
        t.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)}, step=0)
        t.log_figure(fig, "similarity_histogram.png")
    plt.close(fig)
