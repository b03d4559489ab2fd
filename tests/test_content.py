"""Content identity: the same picture under many URLs, re-encoded or resized by a pixel, is
one content group on one side of the split; exact copies of a pair are dropped; two runs of
the built-in data at once fetch its scenes once; reference images are checked against the
training set."""

from __future__ import annotations

import dataclasses
import io
import socket
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.attributes import COLOURS
from tasks.shapes.render import FaultRates, ShapesSpec, build_table, render_scene
from tasks.store.content import (
    NEAR_PSNR_DB,
    fingerprint,
    near_pairs,
    pixel_hash,
    plan_content,
    psnr_db,
)
from tasks.store.pairs import load_split_pairs, raw_content_plan
from tasks.store.workspace import Workspace

SPEC = ShapesSpec(n=300, seed=11, faults=FaultRates(0, 0, 0, 0, 0))


def _scenes(spec: ShapesSpec = SPEC) -> tuple[list[np.ndarray], list[str]]:
    table = build_table(spec)
    images = [render_scene(s, spec.image_size, spec.seed, i) for i, s in enumerate(table.scenes)]
    return images, table.captions


def _encode(rgb: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def _jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    return _decode(_encode(rgb, "JPEG", quality=quality))


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    """Resized to `side` and back to the original side, as an ingest at that size would."""
    h = rgb.shape[0]
    image = Image.fromarray(rgb).resize((side, side), Image.BICUBIC)
    return np.array(image.resize((h, h), Image.LANCZOS))


# ---------------------------------------------------------------------------- the measures


def test_psnr_closed_form():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert psnr_db(a, a + 1) == pytest.approx(20 * np.log10(255.0))  # MSE 1
    b = a.copy()
    b[0, 0, 0] = 116  # one of 48 values off by 16: MSE 256 / 48
    assert psnr_db(a, b) == pytest.approx(10 * np.log10(255.0**2 * 48 / 256))
    assert psnr_db(a, a) == np.inf


def test_pixel_hash_ignores_the_encoding_and_sees_one_pixel():
    rgb = _scenes()[0][0]
    forms = [
        _encode(rgb, compress_level=0),
        _encode(rgb, compress_level=9),
        _encode(rgb, "WEBP", lossless=True),
    ]
    assert {pixel_hash(_decode(f)) for f in forms} == {pixel_hash(rgb)}
    other = rgb.copy()
    other[5, 7, 1] ^= 1
    assert pixel_hash(other) != pixel_hash(rgb)


def test_copies_are_near_and_other_pictures_are_not():
    images, _ = _scenes()
    originals = fingerprint(images[:100])
    for copy in (
        [_jpeg(x, 95) for x in images[:100]],
        [_jpeg(x, 85) for x in images[:100]],
        [_resized(x, 33) for x in images[:100]],
        [_resized(x, 31) for x in images[:100]],
    ):
        found = near_pairs(originals, fingerprint(copy))
        assert {(i, i) for i in range(100)} <= set(map(tuple, found.tolist()))
    # the same scenes with one object in another colour: a different picture
    table = build_table(SPEC)
    recoloured = []
    for i, scene in enumerate(table.scenes[:100]):
        obj = scene.objects[0]
        colour = next(c for c in COLOURS if c != obj.colour)
        moved = dataclasses.replace(obj, colour=colour)
        scene = dataclasses.replace(scene, objects=(moved, *scene.objects[1:]))
        recoloured.append(render_scene(scene, SPEC.image_size, SPEC.seed, i))
    assert psnr_db(originals.thumbs, fingerprint(recoloured).thumbs).max() < NEAR_PSNR_DB
    assert not any(i == j for i, j in near_pairs(originals, fingerprint(recoloured)))


def test_near_duplicates_chain_into_one_group():
    grey = [np.full((16, 16, 3), v, np.uint8) for v in (100, 106, 112, 200)]
    assert psnr_db(grey[0], grey[1]) > NEAR_PSNR_DB > psnr_db(grey[0], grey[2])
    plan = plan_content(["a", "b", "c", "d"], ["x"] * 4, fingerprint(grey))
    assert plan.group[0] == plan.group[1] == plan.group[2] != plan.group[3]
    assert plan.duplicate_of == [None] * 4


# ---------------------------------------------------------------------------- groups and splits


def test_one_picture_under_many_urls_is_one_group_on_one_side():
    images, captions = _scenes()
    x = images[0]
    copies = [x] * 10 + [x, x] + [_jpeg(x), _resized(x, 33)]
    copy_captions = [captions[0]] * 10 + ["another caption"] * 2 + [captions[0]] * 2
    ids = [f"copy{k}" for k in range(len(copies))] + [f"other{k}" for k in range(1, 300)]
    plan = plan_content(ids, copy_captions + captions[1:], fingerprint(copies + images[1:]))
    mine = range(len(copies))
    assert len({plan.group[k] for k in mine}) == 1 and len({plan.split[k] for k in mine}) == 1
    # the same pixels and caption as an earlier pair: a duplicate of the first such pair
    assert plan.duplicate_of[:10] == [None] + ["copy0"] * 9
    assert plan.duplicate_of[10:12] == [None, "copy10"]  # another caption: kept once
    assert plan.duplicate_of[12:14] == [None, None]  # near copies are kept, on the same side
    counts = plan.counts()
    assert counts["duplicates"] == 10 + sum(d is not None for d in plan.duplicate_of[14:])


def test_the_split_never_separates_copies():
    images, captions = _scenes()
    n = len(images)
    copies = images + [_jpeg(x) for x in images] + [_resized(x, 31) for x in images]
    ids = [f"{k:05d}" for k in range(3 * n)]
    fp = fingerprint(copies)
    plan = plan_content(ids, captions * 3, fp, val_fraction=0.3)
    split = np.array(plan.split)
    assert 0.1 < (split == "val").mean() < 0.5
    assert (split[:n] == split[n : 2 * n]).all() and (split[:n] == split[2 * n :]).all()
    # no picture in val has an exact or near copy in train
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    sub = lambda rows: dataclasses.replace(  # noqa: E731
        fp, pixel_hash=[fp.pixel_hash[k] for k in rows], thumbs=fp.thumbs[rows]
    )
    assert len(near_pairs(sub(val), sub(train))) == 0


def _raw_shard(path, spec: ShapesSpec, base_url: str) -> None:
    from tasks.shapes.render import write_as_raw_shard

    write_as_raw_shard(spec, path, base_url)


def test_the_filter_drops_copies_and_keeps_each_picture_on_one_side(tmp_path):
    """The same scenes ingested twice under two URLs (what a second run on another port
    made): the filter keeps one pair per picture and caption, no picture in both splits."""
    from tasks.filter.score import FilterConfig, filter_pairs
    from tasks.train.clip import filter_clip_spec, train_clip

    workspace = Workspace(tmp_path / "home")
    workspace.raw.mkdir(parents=True)
    spec = dataclasses.replace(SPEC, n=150)
    _raw_shard(workspace.raw / "00000.parquet", spec, "http://127.0.0.1:8737")
    _raw_shard(workspace.raw / "00001.parquet", spec, "http://127.0.0.1:40123")
    clip = filter_clip_spec(workspace, steps=2)
    train_clip(clip, workspace)
    cfg = FilterConfig(model=f"marble:{clip.name}", keep="threshold", threshold=-1.0, workers=0)
    summary = filter_pairs(cfg, workspace, log=lambda *_: None)
    first = set(pq.read_table(workspace.raw / "00000.parquet")["pair_id"].to_pylist())
    second = set(pq.read_table(workspace.raw / "00001.parquet")["pair_id"].to_pylist())
    scores = pq.read_table(workspace.scores / "scores.parquet").to_pylist()
    assert {r["pair_id"] for r in scores if r["duplicate_of"]} == second
    assert {r["duplicate_of"] for r in scores if r["duplicate_of"]} <= first
    assert summary["kept"] == 150 and summary["duplicates"] == 150
    pairs = pq.read_table(workspace.pairs)
    assert set(pairs["pair_id"].to_pylist()) == first
    by_split = {
        s: {pixel_hash(_decode(r["png"])) for r in pairs.to_pylist() if r["split"] == s}
        for s in ("train", "val")
    }
    assert by_split["val"] and not by_split["val"] & by_split["train"]
    # training before the filter (from raw) applies the same rule
    data = load_split_pairs(None, workspace.raw)
    assert sorted(data["train"][2] + data["val"][2]) == sorted(first)
    assert set(data["val"][2]) == set(
        pairs.filter(pa.compute.equal(pairs["split"], "val"))["pair_id"].to_pylist()
    )


# ---------------------------------------------------------------------------- the built-in source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _builtin_params(workspace: Workspace, port: int):
    from flows.params import PipelineParams, ShapesParams

    shapes = ShapesParams(n=120, seed=4, fault_rate=0.0, port=port)
    return PipelineParams(home=str(workspace.root), shapes=shapes)


def test_two_runs_at_once_fetch_the_builtin_scenes_once(tmp_path):
    from flows.ingest import download_pairs
    from flows.pipeline import _ingest

    workspace = Workspace(tmp_path / "home")
    params = _builtin_params(workspace, _free_port())
    manifests, errors = [], []

    def run():
        try:
            manifests.append(_ingest(params, workspace, download=download_pairs.fn))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert sorted(bool(m["skipped"]) for m in manifests) == [False, True]
    plan = raw_content_plan(workspace.raw)
    assert len(plan.pair_ids) == 120 and plan.counts()["duplicates"] == 0


def test_a_second_run_on_another_port_leaks_nothing_into_val(tmp_path):
    """When the usual port is taken by another program the built-in source gets new URLs,
    so the same scenes are ingested again as new pairs: the manifest counts them, the split
    keeps each picture's copies on one side, and the filter CLIP, trained on the same
    pictures, keeps its settings (else the rerun would stop at its checkpoint)."""
    from flows.ingest import download_pairs
    from flows.pipeline import _ingest
    from tasks.train.clip import filter_clip_spec

    workspace = Workspace(tmp_path / "home")
    port = _free_port()
    params = _builtin_params(workspace, port)
    _ingest(params, workspace, download=download_pairs.fn)
    first = filter_clip_spec(workspace)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        manifest = _ingest(params, workspace, download=download_pairs.fn)
    assert manifest["content"]["images"] == 240 and manifest["content"]["duplicates"] == 120
    data = load_split_pairs(None, workspace.raw)
    assert len(data["train"][2]) + len(data["val"][2]) == 120
    hashes = {s: set(fingerprint(d[0].numpy()).pixel_hash) for s, d in data.items()}
    assert not hashes["train"] & hashes["val"]
    assert filter_clip_spec(workspace) == first and first.train.steps == 8  # 8 passes of 120


def test_a_waiting_lock_names_the_holder_then_takes_it(tmp_path):
    workspace = Workspace(tmp_path / "home")
    said, order = [], []
    held = threading.Event()

    def first():
        with workspace.lock("source"):
            held.set()
            order.append("first in")
            threading.Event().wait(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with workspace.lock("source", wait=True, log=said.append):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert len(said) == 1 and "held by another run (pid" in said[0]


# ---------------------------------------------------------------------------- reference images


def test_reference_images_are_checked_against_the_training_set(tmp_path):
    from tasks.evaluate.prompts import check_reference

    workspace = Workspace(tmp_path / "home")
    workspace.raw.mkdir(parents=True)
    _raw_shard(workspace.raw / "00000.parquet", SPEC, "http://127.0.0.1:1")
    train_images, _, _ = load_split_pairs(None, workspace.raw)["train"]
    train = train_images.numpy()
    black = np.zeros_like(train[0])  # no training picture is near black
    reference = np.stack([train[0], train[1], _jpeg(train[2]), _resized(train[3], 33), black])
    assert check_reference(workspace, reference) == {"images": 5, "exact": 2, "near": 2}
