"""Reading image-text pairs from Parquet shards as torch datasets.

Works on the raw shards (img2dataset rows; only `status == "success"` rows are used) and on
the filtered pairs (every row is usable). Images come back as float tensors in [-1, 1],
(3, H, W); no horizontal flips, since captions name left and right.

- `ParquetPairs`: map-style, indexes every usable row up front and reads image bytes
  lazily, one row group at a time (cached per worker), so it shuffles and works with
  DataLoader workers.
- `load_all_pairs`: decode a whole (small) data set into one uint8 tensor, for training
  on the built-in data where everything fits in memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.store.content import ContentPlan, fingerprint, plan_content
from tasks.store.digests import json_digest
from tasks.store.images import to_float

IMAGE_COLUMNS = ("png", "jpg", "webp", "image")


def image_column(schema: pa.Schema) -> str:
    for name in IMAGE_COLUMNS:
        if name in schema.names:
            return name
    raise ValueError(f"no image column among {IMAGE_COLUMNS} (columns found: {schema.names})")


def decode_image(data: bytes) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))  # a writable copy


class PairsError(ValueError):
    """Pairs that a stage needs are missing or unreadable; the message names the file."""


# what produces each folder of pairs, for the error that finds one empty
_PRODUCER = {
    "raw": "run `marble ingest` (or `marble run`) first",
    "pairs": "run `marble filter` first",
}


def shard_paths(folder: Path) -> list[Path]:
    paths = sorted(Path(folder).glob("*.parquet"))
    if not paths:
        fix = _PRODUCER.get(Path(folder).name, "check the path")
        raise PairsError(f"no Parquet shards in {folder}; {fix}")
    return paths


def _open_shard(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PairsError(
            f"{path} is not a readable Parquet shard ({e}); remove or re-create it"
        ) from None


@dataclass(frozen=True)
class _RowRef:
    shard: int
    row_group: int
    row: int  # within the row group


class ParquetPairs(Dataset):
    """(image, caption, pair_id) for every usable row of the shards in `folder`.

    split: keep only rows whose `split` column equals it (filtered pairs), or None.
    shards: read only these shard files of the folder (a slice of the work), or all.
    """

    def __init__(self, folder: Path, split: str | None = None, shards: list[Path] | None = None):
        self.paths = shard_paths(folder) if shards is None else [Path(s) for s in shards]
        self.captions: list[str] = []
        self.pair_ids: list[str] = []
        self._refs: list[_RowRef] = []
        for s, path in enumerate(self.paths):
            pf = _open_shard(path)
            cols = [
                c for c in ("pair_id", "caption", "status", "split") if c in pf.schema_arrow.names
            ]
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g, columns=cols)
                keep = pa.array(np.ones(t.num_rows, dtype=bool))
                if "status" in t.column_names:
                    keep = pc.and_(keep, pc.equal(t["status"], "success"))
                if split is not None:
                    if "split" not in t.column_names:
                        raise ValueError(f"{path} has no split column; pass split=None")
                    keep = pc.and_(keep, pc.equal(t["split"], split))
                rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                self.captions += pc.take(t["caption"], rows).to_pylist()
                self.pair_ids += pc.take(t["pair_id"], rows).to_pylist()
                self._refs += [_RowRef(s, g, int(r)) for r in rows]
        self._cache_key: tuple[int, int] | None = None
        self._cache: list[bytes] = []

    def __len__(self) -> int:
        return len(self._refs)

    def image_bytes(self, i: int) -> bytes:
        ref = self._refs[i]
        if self._cache_key != (ref.shard, ref.row_group):  # one row group at a time per worker
            pf = _open_shard(self.paths[ref.shard])
            column = image_column(pf.schema_arrow)
            self._cache = pf.read_row_group(ref.row_group, columns=[column])[column].to_pylist()
            self._cache_key = (ref.shard, ref.row_group)
        return self._cache[ref.row]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str]:
        image = to_float(decode_image(self.image_bytes(i)))  # (3, H, W) in [-1, 1]
        return image, self.captions[i], self.pair_ids[i]


def load_all_pairs(
    folder: Path, split: str | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Decode every usable row: (N, H, W, 3) uint8 tensor, captions, pair_ids (shard order)."""
    ds = ParquetPairs(folder, split)
    if len(ds) == 0:
        raise ValueError(
            f"no usable pairs in {folder}" + (f" for split {split!r}" if split else "")
        )
    images = np.stack([decode_image(ds.image_bytes(i)) for i in range(len(ds))])
    return torch.from_numpy(images), ds.captions, ds.pair_ids


def raw_content_plan(raw_dir: Path, val_fraction: float = 0.05) -> ContentPlan:
    """Content groups, splits and duplicates of every successfully downloaded raw pair, in
    reading order (shards by name, rows in order: the first copy ingested is the one kept)."""
    ds = ParquetPairs(raw_dir)
    fp = fingerprint(decode_image(ds.image_bytes(i)) for i in range(len(ds)))
    return plan_content(ds.pair_ids, ds.captions, fp, val_fraction)


def pairs_table(rows: pa.Table, split: list[str]) -> pa.Table:
    """A training set's rows from raw rows: pair_id, caption, the image column, width,
    height, split (the filter's kept pairs and every data variant have this shape)."""
    column = image_column(rows.schema)
    sizes = {
        k: rows[k] if k in rows.column_names else pa.nulls(rows.num_rows, pa.int64())
        for k in ("width", "height")
    }
    return pa.table(
        {"pair_id": rows["pair_id"], "caption": rows["caption"], column: rows[column]}
        | sizes
        | {"split": pa.array(split, pa.string())}
    )


def write_pairs(table: pa.Table, folder: Path, rows_per_shard: int = 10_000) -> None:
    """Write a training set as pairs-NNNNN.parquet shards into `folder` (a temporary one)."""
    for k, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        pq.write_table(table.slice(start, rows_per_shard), Path(folder) / f"pairs-{k:05d}.parquet")


def training_set_summary(workspace, pair_ids: list[str], splits: list[str]) -> dict:
    """What a training set holds: pairs per split, its digest (`pairs_digest`'s), and on the
    built-in data how clean it is: `precision`, the share of its pairs whose caption is
    right, and `recall`, the share of every usable right-caption pair (downloaded, not a
    duplicate: data/scores) that it holds."""
    by_split = {s: sorted(p for p, t in zip(pair_ids, splits, strict=True) if t == s)
                for s in ("train", "val")}  # fmt: skip
    out = {
        "pairs": len(pair_ids), "train": len(by_split["train"]), "val": len(by_split["val"]),
        "digest": json_digest(by_split),
    }  # fmt: skip
    truth_path = workspace.source / "truth.parquet"
    if not truth_path.exists() or not pair_ids:
        return out
    truth = pq.read_table(truth_path, columns=["pair_id", "caption_is_wrong"]).to_pydict()
    wrong = dict(zip(truth["pair_id"], truth["caption_is_wrong"], strict=True))
    known = [p for p in pair_ids if p in wrong]
    if known:
        out["precision"] = sum(not wrong[p] for p in known) / len(known)
    scores = workspace.scores / "scores.parquet"
    if scores.exists():
        t = pq.read_table(scores, columns=["pair_id", "similarity", "duplicate_of"])
        usable = pc.and_(pc.is_valid(t["similarity"]), pc.is_null(t["duplicate_of"]))
        right = {p for p in t.filter(usable)["pair_id"].to_pylist() if wrong.get(p) is False}
        if right:
            out["recall"] = len(right & set(known)) / len(right)
    return out


def describe_training_set(workspace, variant: str) -> dict:
    """`training_set_summary` of a data variant's training set as written on disk."""
    folder = workspace.training_pairs(variant)
    table = pa.concat_tables(
        pq.read_table(p, columns=["pair_id", "split"]) for p in shard_paths(folder)
    )
    return {"variant": variant} | training_set_summary(
        workspace, table["pair_id"].to_pylist(), table["split"].to_pylist()
    )


def pairs_digest(data: dict[str, tuple[torch.Tensor, list[str], list[str]]]) -> str:
    """sha1 of the pair_ids of each split of `load_split_pairs`' result: which pairs a model
    is trained on (a new filter result is new data)."""
    return json_digest({split: sorted(d[2]) for split, d in data.items()})


def load_split_pairs(
    pairs_dir: Path, raw_dir: Path
) -> dict[str, tuple[torch.Tensor, list[str], list[str]]]:
    """Every usable pair by split: {"train": (images, captions, pair_ids), "val": ...}.

    Reads the filtered pairs when they exist, else the raw shards, split by content group
    with duplicates dropped (`raw_content_plan`, the rule the filter applies), so training
    runs before the filter stage has.
    """
    if (
        pairs_dir is not None
        and Path(pairs_dir).is_dir()
        and any(Path(pairs_dir).glob("*.parquet"))
    ):
        return {split: load_all_pairs(pairs_dir, split) for split in ("train", "val")}
    images, captions, ids = load_all_pairs(raw_dir)
    plan = plan_content(ids, captions, fingerprint(images.numpy()))
    out = {}
    for split in ("train", "val"):
        keep = [
            k for k, (s, dup) in enumerate(zip(plan.split, plan.duplicate_of, strict=True))
            if s == split and dup is None
        ]  # fmt: skip
        if not keep:
            raise PairsError(
                f"no {split} pairs among the {len(ids)} in {raw_dir} (the split is a function "
                "of each picture's content group, val about 5 %); ingest more pairs"
            )
        out[split] = (images[keep], [captions[k] for k in keep], [ids[k] for k in keep])
    return out
