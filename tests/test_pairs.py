"""The Parquet pair reader: values in [-1, 1], only usable rows, DataLoader workers, splits."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tasks.store.images import to_float
from tasks.store.pairs import PairsError, ParquetPairs, load_all_pairs


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """Two raw-style shards: 5 rows each, every third row failed (no image)."""
    for s in range(2):
        rows = []
        for r in range(5):
            k = 5 * s + r
            ok = k % 3 != 0
            rows.append(
                {
                    "pair_id": f"{k:016x}",
                    "caption": f"caption {k}",
                    "status": "success" if ok else "failed_to_download",
                    "png": _png((k * 20, 0, 255)) if ok else None,
                }
            )
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{s:05d}.parquet", row_group_size=2)
    return tmp_path


def test_reads_only_successful_rows_in_range(shards):
    ds = ParquetPairs(shards)
    expected = [k for k in range(10) if k % 3 != 0]
    assert ds.pair_ids == [f"{k:016x}" for k in expected]
    image, caption, pid = ds[2]
    k = expected[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert caption == f"caption {k}" and pid == f"{k:016x}"
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([k * 20 / 127.5 - 1, -1.0, 1.0]))
    assert image.min() >= -1 and image.max() <= 1


def test_dataloader_workers_see_every_row_once(shards):
    ds = ParquetPairs(shards)
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    seen = [pid for _, _, pids in loader for pid in pids]
    assert seen == ds.pair_ids


def test_split_filter_and_load_all(shards, tmp_path):
    table = pq.read_table(shards / "00000.parquet")
    table = table.append_column("split", pa.array(["train", "val", "train", "val", "train"]))
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(table, folder / "a.parquet")
    val = ParquetPairs(folder, split="val")
    assert val.pair_ids == [f"{1:016x}"]  # row 3 failed
    images, captions, ids = load_all_pairs(folder, split="train")
    assert images.shape == (2, 8, 8, 3) and images.dtype == torch.uint8  # row 0 failed
    assert ids == [f"{2:016x}", f"{4:016x}"] and captions == ["caption 2", "caption 4"]
    with pytest.raises(ValueError, match="no split column"):
        ParquetPairs(shards, split="val")
    with pytest.raises(PairsError, match="no Parquet shards"):
        ParquetPairs(tmp_path / "empty")


def test_to_float_range():
    x = torch.tensor([[[0, 255, 128]]], dtype=torch.uint8)  # (1, 1, 3)
    torch.testing.assert_close(to_float(x)[:, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))
