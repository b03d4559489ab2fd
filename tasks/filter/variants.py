"""Data variants: the training sets a diffusion model may be trained on, so that a sweep can
ask whether the filter pays (DataComp's question, asked of a text-to-image model).

    write_variant(workspace, "all") -> the training set's summary

- "kept": data/pairs, the filter's output (tasks/filter/score.py); nothing to write here.
- "all": every successfully downloaded pair, unfiltered, into data/variants/all/: duplicates
  dropped and every picture's content group on the side of the split the filter gives it
  (tasks/store/content.py), so `kept` and `all` differ only by the filter's cut.

The names and their descriptions are `tasks.store.workspace.DATA_VARIANTS`. A variant's
folder is written atomically with its stage record (tasks/store/stages.py): a rerun on the
same raw shards with the same code is skipped. The summary (`training_set_summary`) carries
the training set's digest, the key its models' checkpoints and evaluation rows carry.
"""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.filter.score import FilterConfig
from tasks.store import content
from tasks.store.digests import files_digest, json_digest, source_digest
from tasks.store.files import atomic_dir
from tasks.store.pairs import (
    PairsError,
    describe_training_set,
    pairs_table,
    raw_content_plan,
    shard_paths,
    training_set_summary,
    write_pairs,
)
from tasks.store.stages import RECORD, recorded, write_record
from tasks.store.workspace import DATA_VARIANTS, DEFAULT_VARIANT, Workspace

VAL_FRACTION = FilterConfig.val_fraction  # the filter's default


def _filter_val_fraction(workspace: Workspace) -> float:
    record = workspace.scores / RECORD
    if record.exists():
        return json.loads(record.read_text())["summary"].get("val_fraction", VAL_FRACTION)
    return VAL_FRACTION


def check_variants(names) -> list[str]:
    """The names, each a known data variant, without repeats; ValueError naming the others."""
    unknown = [n for n in names if n not in DATA_VARIANTS]
    if unknown:
        raise ValueError(
            f"unknown data variant(s) {', '.join(map(repr, unknown))}; choose from "
            + "; ".join(f"{k} ({v})" for k, v in DATA_VARIANTS.items())
        )
    return list(dict.fromkeys(names))


def write_variant(
    workspace: Workspace, variant: str, val_fraction: float | None = None, log=print
) -> dict:
    """Make sure the training set of `variant` exists and is current; its summary.
    val_fraction: None splits as the kept pairs were split (the filter's recorded setting,
    or the filter's default before any filter has run)."""
    (variant,) = check_variants([variant])
    if val_fraction is None:
        val_fraction = _filter_val_fraction(workspace)
    folder = workspace.training_pairs(variant)
    if variant == DEFAULT_VARIANT:  # the filter's output; none: an error saying to filter
        return describe_training_set(workspace, variant)
    with workspace.lock(f"variant-{variant}"):
        shards = shard_paths(workspace.raw)
        code = source_digest(sys.modules[__name__], content)
        settings = {"variant": variant, "val_fraction": val_fraction}
        inputs = json_digest({"raw": files_digest(shards), "settings": settings, "code": code})
        done = recorded(folder, inputs)
        if done is not None:
            log(f"data variant {variant}: skipped, {done['skipped']}")
            return done
        plan = raw_content_plan(workspace.raw, val_fraction)
        unique = plan.unique_ids()
        if not unique:
            raise PairsError(f"no usable pairs in {workspace.raw} for data variant {variant}")
        split = dict(zip(plan.pair_ids, plan.split, strict=True))
        raw = pa.concat_tables(pq.read_table(s) for s in shards)
        rows = raw.filter(pc.is_in(raw["pair_id"], value_set=pa.array(unique, pa.string())))
        ids = rows["pair_id"].to_pylist()
        table = pairs_table(rows, [split[p] for p in ids])
        summary = {"variant": variant} | training_set_summary(
            workspace, ids, table["split"].to_pylist()
        )
        with atomic_dir(folder) as tmp:
            write_pairs(table, tmp)
            write_record(tmp, inputs, summary)
    log(
        f"data variant {variant}: {summary['pairs']} pairs ({summary['train']} train, "
        f"{summary['val']} val) in {folder}"
    )
    return summary
