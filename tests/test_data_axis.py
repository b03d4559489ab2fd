"""The data axis: the same grid trained on the filter's kept pairs and on every pair, judged by
the same sweep. Variant training sets, their reruns, names, the grid's specs, rows keyed by
variant, the summary's data verdict and training-set lines, and the lineage view."""

from __future__ import annotations

import dataclasses
import os

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from flows.cli import main
from flows.params import TrainingParams
from flows.train import training_specs
from tasks.evaluate.spec import SweepSpec
from tasks.evaluate.sweep import run_sweep
from tasks.filter.score import FilterConfig, filter_pairs
from tasks.filter.variants import check_variants, write_variant
from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard
from tasks.store.pairs import load_split_pairs, pairs_digest
from tasks.store.query import run_query
from tasks.store.workspace import Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train.clip import ClipTrainSpec, judge_clip_spec, train_clip
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion
from tests.training_helpers import make_workspace, tiny_train

pytestmark = pytest.mark.slow
KEPT, ALL = "clip-tiny_unet-xs_kl-f4", "clip-tiny_unet-xs_kl-f4_all"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Workspace:
    """Built-in data (160 pairs, 20 % wrong captions), kept pairs, the `all` variant, and one
    grid point trained on each (a few steps each)."""
    workspace = make_workspace(tmp_path_factory.mktemp("data-axis") / "home", 160, 2, truth=True)
    tiny_clip = tiny_train(ema_halflife_images=0)
    train_clip(ClipTrainSpec(train=tiny_clip), workspace)
    cfg = FilterConfig(
        model="marble:clip-tiny", workers=0, keep="top_fraction", top_fraction=0.7,
        val_fraction=0.15,
    )  # fmt: skip
    filter_pairs(cfg, workspace, log=lambda *_: None)
    write_variant(workspace, "all", log=lambda *_: None)  # split as the filter did
    train_autoencoder(AutoencoderTrainSpec(train=tiny_train()), workspace)
    judge = judge_clip_spec()
    train_clip(dataclasses.replace(judge, train=dataclasses.replace(tiny_clip, seed=1)), workspace)
    for variant in ("kept", "all"):
        train_diffusion(DiffusionTrainSpec(train=tiny_train(), data_variant=variant), workspace)
    return workspace


@pytest.fixture(scope="module")
def swept(trained):
    spec = SweepSpec(
        guidance_scales=(2.0,), num_samples=8, prompt_set="val", bootstrap=10, batch_size=8
    )
    return trained, run_sweep(spec, trained, log=lambda *_: None)


def _truth(workspace: Workspace) -> dict[str, bool]:
    t = pq.read_table(workspace.source / "truth.parquet").to_pydict()
    return dict(zip(t["pair_id"], t["caption_is_wrong"], strict=True))


def test_variant_names_that_are_not_allowed_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown data variant\(s\) 'nope'; choose from kept"):
        check_variants(["kept", "nope"])
    with pytest.raises(ValueError, match="unknown data_variant 'nope'"):
        DiffusionTrainSpec(data_variant="nope")
    with pytest.raises(ValueError, match="unknown data variant 'nope'"):
        Workspace(tmp_path).training_pairs("nope")
    with pytest.raises(ValidationError):
        TrainingParams(data_variants=["kept", "../etc"])
    for command in ("run", "evaluate"):
        with pytest.raises(SystemExit) as stop:
            main(["--home", str(tmp_path), command, "--data-variants", "kept,bogus"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "invalid choice 'bogus' (choose from kept, all)" in err


def test_the_grid_trains_each_point_once_per_variant():
    params = TrainingParams(
        text_encoders=["clip-tiny"], unets=["unet-xs"], data_variants=["kept", "all", "kept"]
    )
    assert params.data_variants == ["kept", "all"]
    _, _, diffusions = training_specs(params)
    assert [(s.name, s.data_variant) for s in diffusions] == [(KEPT, "kept"), (ALL, "all")]


def test_the_all_variant_holds_every_pair_split_as_kept(trained):
    scores = pq.read_table(trained.scores / "scores.parquet").to_pylist()
    unique = {r["pair_id"] for r in scores if r["similarity"] is not None and not r["duplicate_of"]}
    all_pairs = pq.read_table(trained.training_pairs("all")).to_pylist()
    assert {r["pair_id"] for r in all_pairs} == unique
    kept = {r["pair_id"]: r["split"] for r in pq.read_table(trained.pairs).to_pylist()}
    assert kept and all(kept[r["pair_id"]] == r["split"] for r in all_pairs if r["pair_id"] in kept)
    # precision and recall against the built-in truth, by hand
    wrong = _truth(trained)
    right = {p for p in unique if not wrong[p]}
    for variant, ids in (("all", unique), ("kept", set(kept))):
        summary = write_variant(trained, variant, log=lambda *_: None)
        assert summary["precision"] == pytest.approx(len(ids & right) / len(ids))
        assert summary["recall"] == pytest.approx(len(ids & right) / len(right))
        data = load_split_pairs(trained.training_pairs(variant), trained.raw)
        assert summary["digest"] == pairs_digest(data)
    assert write_variant(trained, "all")["recall"] == 1.0


def test_a_rerun_skips_an_unchanged_variant_and_redoes_a_changed_one(trained, tmp_path):
    workspace = Workspace(tmp_path / "home")
    workspace.raw.mkdir(parents=True)
    spec = ShapesSpec(n=60, seed=5, faults=FaultRates.uniform(0))
    write_as_raw_shard(spec, workspace.raw / "00000.parquet")
    first = write_variant(workspace, "all", log=lambda *_: None)
    shard = next(workspace.training_pairs("all").glob("*.parquet"))
    stamp = os.stat(shard).st_mtime_ns
    again = write_variant(workspace, "all", log=lambda *_: None)
    assert again["skipped"].startswith("inputs unchanged") and again["digest"] == first["digest"]
    assert os.stat(shard).st_mtime_ns == stamp
    more = dataclasses.replace(spec, seed=6)
    write_as_raw_shard(more, workspace.raw / "00001.parquet")
    grown = write_variant(workspace, "all", log=lambda *_: None)
    assert "skipped" not in grown and grown["pairs"] == 120 and grown["digest"] != first["digest"]


def test_a_variant_without_its_training_set_is_a_clear_error(tmp_path):
    workspace = Workspace(tmp_path / "home")
    workspace.raw.mkdir(parents=True)
    write_as_raw_shard(ShapesSpec(n=40, faults=FaultRates.uniform(0)), workspace.raw / "0.parquet")
    with pytest.raises(ValueError, match="no training set for data variant 'all'"):
        train_diffusion(DiffusionTrainSpec(train=tiny_train(), data_variant="all"), workspace)


def test_rows_checkpoints_and_summary_are_keyed_by_variant(swept):
    workspace, summary = swept
    rows = [
        r for r in pq.read_table(workspace.evaluations).to_pylist() if r["model"] in (KEPT, ALL)
    ]
    variant = {r["model"]: r["data_variant"] for r in rows}
    assert variant == {KEPT: "kept", ALL: "all"}
    digests = {v: write_variant(workspace, v)["digest"] for v in ("kept", "all")}
    assert {r["model"]: r["training_set_digest"] for r in rows} == {
        KEPT: digests["kept"],
        ALL: digests["all"],
    }
    assert {r["grid_point"] for r in rows} == {KEPT, ALL}
    lines = summary["lines"]
    assert any(line.startswith("training set kept: ") and "(precision)" in line for line in lines)
    assert any(
        line.startswith("training set all: ") and "100.0% of every" in line for line in lines
    )
    assert any(line.startswith("data_variant: the filter (all -> kept;") for line in lines)
    # the kept val images, the reference, are in neither variant's train split: both are
    # cut by the same content groups
    val = pq.read_table(workspace.pairs, filters=[("split", "==", "val")]).num_rows
    for v in ("kept", "all"):
        line = f"reference images in training set {v}: 0 exact copies, 0 more within 30 dB"
        assert f"{line}, of {val}" in lines
    found = [v for v in summary["verdicts"] if v["axis"] == "data_variant"]
    assert {v["metric"] for v in found} >= {"fid", "clip_score"} and all(v["k"] == 1 for v in found)
    assert summary["plot"].exists()


def test_the_lineage_view_names_each_samples_training_set(swept):
    workspace, _ = swept
    columns, rows = run_query(
        workspace,
        "SELECT model, data_variant, training_set_digest, prompt_pair_kept, count(*) "
        "FROM lineage GROUP BY ALL ORDER BY model",
    )
    digests = {v: write_variant(workspace, v)["digest"] for v in ("kept", "all")}
    assert rows == [
        (KEPT, "kept", digests["kept"], True, 8),
        (ALL, "all", digests["all"], True, 8),
    ]
    # the same from the sample's own columns, joined by hand
    _, joined = run_query(
        workspace,
        "SELECT DISTINCT s.model, e.data_variant FROM samples s JOIN evaluations e "
        "USING (sweep_id, point_id) ORDER BY 1",
    )
    assert joined == [(KEPT, "kept"), (ALL, "all")]


def test_the_run_form_lists_the_variants_with_their_descriptions():
    """Prefect builds the pipeline's Custom run form from this schema (the browser test
    fills that form)."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline_flow
    from tasks.store.workspace import DATA_VARIANTS

    schema = parameter_schema(pipeline_flow).model_dump()
    field = schema["definitions"]["TrainingParams"]["properties"]["data_variants"]
    assert field["items"]["enum"] == list(DATA_VARIANTS) and field["default"] == ["kept"]
    assert all(f"{name}: {text}" in field["description"] for name, text in DATA_VARIANTS.items())
