"""Evaluation sweeps end to end on a tiny grid: rows, runs, plot, queries, lineage, errors."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks.evaluate.prompts import build_prompts, image_seed
from tasks.evaluate.spec import SweepSpec
from tasks.evaluate.sweep import run_sweep
from tasks.filter.score import FilterConfig, filter_pairs
from tasks.store.query import QueryError, run_query
from tasks.store.tracking import use_tracking_store
from tasks.store.workspace import Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train.clip import ClipTrainSpec, judge_clip_spec, train_clip
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion
from tests.training_helpers import make_workspace, tiny_train

pytestmark = pytest.mark.slow
MODELS = ("clip-small_unet-xs_kl-f4", "clip-tiny_unet-xs_kl-f4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Workspace:
    """Built-in data (200 pairs), kept pairs, an autoencoder, two text towers, the judge and
    two diffusion models, a few steps each."""
    workspace = make_workspace(tmp_path_factory.mktemp("evaluate") / "home", 200, 0, truth=True)
    tiny_clip = tiny_train(ema_halflife_images=0)
    train_clip(ClipTrainSpec(train=tiny_clip), workspace)
    config = FilterConfig(  # 3 of these 200 pictures' content groups fall in val at 2.2 %
        model="marble:clip-tiny", workers=0, keep="top_fraction", top_fraction=0.9,
        val_fraction=0.022,
    )  # fmt: skip
    filter_pairs(config, workspace)
    train_autoencoder(AutoencoderTrainSpec(train=tiny_train()), workspace)
    train_clip(ClipTrainSpec(preset="clip-small", train=tiny_clip), workspace)
    judge = judge_clip_spec()
    train_clip(dataclasses.replace(judge, train=dataclasses.replace(tiny_clip, seed=1)), workspace)
    for text in ("clip-tiny", "clip-small"):
        train_diffusion(DiffusionTrainSpec(text_encoder=text, train=tiny_train()), workspace)
    return workspace


@pytest.fixture(scope="module")
def swept(trained):
    spec = SweepSpec(
        guidance_scales=(1.0, 3.0), num_samples=12, prompt_set="val", bootstrap=20, batch_size=12
    )
    return trained, run_sweep(spec, trained, log=lambda *_: None)


def test_rows_for_every_point_and_metric(swept):
    workspace, summary = swept
    rows = pq.read_table(workspace.evaluations).to_pylist()
    points = {(r["model"], r["guidance_scale"]) for r in rows if r["model"] in MODELS}
    assert points == {(m, g) for m in MODELS for g in (1.0, 3.0)}
    metrics = {r["metric"] for r in rows if r["model"] == MODELS[0] and r["guidance_scale"] == 1}
    assert {"fid", "fd_clip", "cmmd", "clip_score", "attr_colour", "attr_all_correct"} <= metrics
    for r in rows:
        assert r["sweep_id"] == summary["sweep_id"] and r["code_version"] and r["timestamp"]
        assert r["ci_low"] <= r["ci_high"]
        if r["model"] in MODELS:
            assert r["n"] == 12 and r["n_bootstrap"] == 20 and len(r["replicates"]) == 20
            assert r["prompts_repeat"] and r["prompt_set"] == "val"  # 12 images, fewer val pairs
            assert (
                r["mlflow_run_id"] and r["unet_digest"] and r["judge"] == "marble:judge-clip-base"
            )
    fid = next(r for r in rows if r["metric"] == "fid")
    assert fid["extractor"] == "inception" and fid["value"] > 0
    reference = {r["metric"]: r for r in rows if r["model"] == "reference"}
    assert {"clip_score_real", "clip_score_shuffled", "judge_i2t_r1", "judge_t2i_r1"} <= set(
        reference
    )
    # no floor: the val split has at most 3 images, too few for two real sets (the summary
    # says so)
    assert not [r for r in rows if r["model"] == "floor"]
    assert any(
        line.startswith("floor: not measured: the val split has") for line in summary["lines"]
    )
    point = next(r for r in rows if r["model"] == MODELS[0])
    assert point["grid_point"] == MODELS[0] and point["replicate"] == 0 and point["point_s"] > 0


def test_every_point_sees_the_same_prompts_and_seeds(swept):
    workspace, _ = swept
    samples = pq.read_table(workspace.samples).to_pylist()
    by_point: dict = {}
    for s in samples:
        by_point.setdefault(s["point_id"], []).append((s["pair_id"], s["seed"], s["repeat"]))
    first, *others = by_point.values()
    assert len(by_point) == 4 and all(o == first for o in others)
    assert all(seed == image_seed(pid, repeat) for pid, seed, repeat in first)
    assert len({seed for _, seed, _ in first}) == 12  # repeated captions get fresh seeds


def test_mlflow_parent_and_child_runs(swept):
    import mlflow

    workspace, summary = swept
    use_tracking_store(workspace)
    parent = mlflow.get_run(summary["mlflow_run_id"])
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == 4
    assert {"metrics.fid", "metrics.fid_ci_low", "metrics.clip_score", "metrics.img_per_s"} <= set(
        children.columns
    )
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(children.run_id[0])]
    assert "samples.png" in artifacts
    # the MLflow UI opens marble's experiments on their runs table, not the GenAI view
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent_artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)]
    assert "summary.txt" in parent_artifacts and any(
        a.startswith("pareto-") for a in parent_artifacts
    )


def test_pareto_plot_and_summary(swept):
    workspace, summary = swept
    assert summary["plot"].exists() and summary["plot"].parent == workspace.plots
    assert any(line.startswith("text_encoder one size up") for line in summary["lines"])
    steps = {(e["from"], e["to"]) for e in summary["effects"]}
    assert steps == {("clip-tiny", "clip-small")}
    # one training per grid point: no verdict, and the summary says why
    assert any("not resolved at K = 1, N = 12" in line for line in summary["lines"])
    assert any(line.startswith("answer: not resolved") for line in summary["lines"])
    assert not any(line.startswith("answer: one size up") for line in summary["lines"])
    # the verdicts, with their variance components, are stored with the sweep
    columns, rows = run_query(
        workspace, "SELECT axis, metric, k, var_within FROM verdicts WHERE kind = 'axis'"
    )
    assert {(r[0], r[1], r[2]) for r in rows} >= {("text_encoder", "fid", 1)}


def test_query_views_and_lineage(swept, capsys):
    workspace, _ = swept
    columns, rows = run_query(workspace, "SELECT count(*) AS n FROM samples")
    assert columns == ["n"] and rows == [(4 * 12,)]
    pid = pq.read_table(workspace.samples).column("pair_id")[0].as_py()
    lineage = f"""
        SELECT r.url, sc.similarity, p.split, s.point_id, s.seed, s.clip_score
        FROM samples s JOIN pairs p USING (pair_id) JOIN raw r USING (pair_id)
        JOIN scores sc USING (pair_id) WHERE s.pair_id = '{pid}'"""
    columns, rows = run_query(workspace, lineage)
    assert len(rows) >= 4 and all(r[2] == "val" and r[0].startswith("http://") for r in rows)
    _, runs = run_query(workspace, "SELECT experiment, count(*) FROM runs GROUP BY 1 ORDER BY 1")
    assert ("marble-evaluate", 5) in runs and dict(runs)["marble-train"] >= 5
    assert (
        main(
            [
                "--home",
                str(workspace.root),
                "query",
                "SELECT metric FROM evaluations LIMIT 2",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_a_bad_query_is_one_clear_error(swept, capsys):
    workspace, _ = swept
    with pytest.raises(QueryError, match="views in .*evaluations"):
        run_query(workspace, "SELECT * FROM nowhere")
    assert main(["--home", str(workspace.root), "query", "SELEC 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marble: error:") and err.count("\n") == 1


def test_heldout_prompts_are_fresh_scenes_with_true_captions(trained):
    prompts = build_prompts(trained, "auto", 30)  # built-in data: heldout
    assert prompts.name == "heldout" and len(prompts.reference) == 30
    assert prompts.reference.shape[1:] == (32, 32, 3) and len(set(prompts.pair_ids)) == 30
    trained_captions = set(pq.read_table(trained.raw).column("caption").to_pylist())
    assert len(set(prompts.captions) - trained_captions) > 0  # scenes training never saw
    # the floor: the same scenes drawn again from their captions, paired as samples are
    floor = prompts.floor
    assert floor.paired and floor.first_ids == floor.second_ids == prompts.pair_ids
    assert (floor.first == prompts.reference).all() and (floor.second != floor.first).any()


def test_a_heldout_sweep_measures_its_floor(trained):
    """Real against real at the sweep's N: the held-out scenes drawn again, paired."""
    spec = SweepSpec(
        models=(MODELS[1],), guidance_scales=(4.0,), num_samples=8, prompt_set="heldout",
        bootstrap=10, batch_size=8,
    )  # fmt: skip
    summary = run_sweep(spec, trained, log=lambda *_: None)
    rows = pq.read_table(trained.evaluations / f"{summary['sweep_id']}-reference.parquet")
    floor = {r["metric"]: r for r in rows.to_pylist() if r["model"] == "floor"}
    assert set(floor) == {"fid", "fd_clip", "cmmd"}
    assert all(r["n"] == 8 and "drawn again" in r["floor"] for r in floor.values())
    assert floor["fid"]["value"] > 0 and floor["fid"]["ci_low"] <= floor["fid"]["ci_high"]
    assert summary["floors"]["fid"]["n"] == 8
    floor_line = "floor, real against real at N = 8 (the 8 held-out"
    assert any(line.startswith(floor_line) for line in summary["lines"])
    # before the floor: what the model was trained on, and the reference check
    kept = pq.read_table(trained.pairs).num_rows
    assert summary["lines"][0].startswith(f"training set kept: {kept} pairs")
    assert re.fullmatch(
        r"reference images in training set kept: 0 exact copies, \d+ more within "
        r"30 dB, of 8",
        summary["lines"][1],
    )


def test_bad_inputs_are_one_clear_error_and_write_nothing(trained, tmp_path):
    before = (
        sorted(p.name for p in trained.evaluations.glob("*"))
        if trained.evaluations.exists()
        else []
    )
    with pytest.raises(ValueError, match="num_samples must be at least 2"):
        SweepSpec(num_samples=1)
    with pytest.raises(ValueError, match="unknown diffusion model.*nope.*found: clip-small"):
        run_sweep(SweepSpec(models=("nope",), num_samples=4), trained)
    with pytest.raises(ValueError, match="judge marble:clip-tiny is the text encoder"):
        run_sweep(SweepSpec(judge="marble:clip-tiny", num_samples=4), trained)
    with pytest.raises(ValueError, match="no diffusion checkpoints in"):
        run_sweep(SweepSpec(num_samples=4), Workspace(tmp_path / "empty"))
    empty_val = Workspace(tmp_path / "novals")
    (empty_val.checkpoints / "diffusion" / MODELS[0]).mkdir(parents=True)
    for kind, name in (("diffusion", MODELS[0]), ("clip", "judge-clip-base")):
        src = trained.checkpoint(kind, name)
        for f in src.iterdir():
            dst = empty_val.checkpoint(kind, name)
            dst.mkdir(parents=True, exist_ok=True)
            (dst / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="no Parquet shards in .*pairs; run `marble filter` first"):
        run_sweep(SweepSpec(num_samples=4, prompt_set="val"), empty_val)
    after = (
        sorted(p.name for p in trained.evaluations.glob("*"))
        if trained.evaluations.exists()
        else []
    )
    assert after == before
    assert not empty_val.results.exists()


def test_intervals_are_wider_for_fewer_samples():
    from eval.bootstrap import mean_interval

    values = np.random.default_rng(0).normal(size=400)
    wide = mean_interval(values[:25], 200, 0)
    narrow = mean_interval(values, 200, 0)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_a_rerun_with_the_same_inputs_skips_every_point(swept):
    workspace, first = swept
    files = sorted(p.name for p in workspace.evaluations.glob("*.parquet"))
    lines: list[str] = []
    spec = SweepSpec(
        guidance_scales=(1.0, 3.0), num_samples=12, prompt_set="val", bootstrap=20, batch_size=12
    )
    again = run_sweep(spec, workspace, log=lines.append)
    assert sum("skipped, evaluated before" in line for line in lines) == 4
    new = sorted(p.name for p in workspace.evaluations.glob("*.parquet"))
    assert [f for f in new if f not in files] == [f"{again['sweep_id']}-reference.parquet"]
    assert again["best"] == first["best"]


def _grid_rows(text_change: float, unet_change: float, seeds, spread: float, rng) -> list[dict]:
    """Rows of a 2 x 2 grid (clip-tiny/small x unet-xs/s) trained once per seed: each model's
    FID is 100 + the steps it takes, + a training spread per model and seed, + sampling."""
    rows = []
    for text, t_step in (("clip-tiny", 0.0), ("clip-small", text_change)):
        for unet, u_step in (("unet-xs", 0.0), ("unet-s", unet_change)):
            point = f"{text}_{unet}_kl-f4"
            for seed in seeds:
                fid = 100.0 + t_step + u_step + rng.normal(0, spread)
                boot = fid + rng.normal(0, 0.05, 20)
                common = {"text_encoder": text, "unet": unet, "autoencoder": "kl-f4",
                          "guidance_scale": 4.0, "grid_point": point, "replicate": seed,
                          "model": point if not seed else f"{point}-r{seed}", "n": 100}  # fmt: skip
                rows.append(common | {"metric": "fid", "value": fid, "ci_low": fid - 0.1,
                                      "ci_high": fid + 0.1, "replicates": list(boot)})  # fmt: skip
    return rows


def test_a_verdict_is_named_only_where_replicates_resolve_it():
    from tasks.evaluate.report import summary_lines

    rng = np.random.default_rng(0)
    # five seeds; the text step lowers FID by 3, the U-Net step by 0.2, trainings spread by 1
    rows = _grid_rows(-3.0, -0.2, range(5), 1.0, rng)
    lines, found = summary_lines(rows, {"fid": 0.5})
    verdicts = {v["axis"]: v for v in found["verdicts"]}
    assert verdicts["text_encoder"]["resolved"] and verdicts["text_encoder"]["better"]
    assert not verdicts["unet"]["resolved"] and verdicts["unet"]["k"] == 5
    assert "answer: one size up on text_encoder is resolved better on fid" in lines
    assert not any("on unet is resolved" in line for line in lines)
    unet_line = next(line for line in lines if line.startswith("  fid") and "not resolved" in line)
    assert "not resolved at K = 5, N = 100; detectable:" in unet_line
    assert "0.5 needs K = " in unet_line
    # the same sweep with one training per grid point names no winner
    lines, found = summary_lines(_grid_rows(-3.0, -0.2, [0], 1.0, rng))
    assert all(not v["resolved"] for v in found["verdicts"])
    assert any("the spread between trainings is unknown" in line for line in lines)
    assert any(line.startswith("answer: not resolved") and "--replicates" in line for line in lines)


def test_a_nightly_without_history_times_its_models(trained):
    from tasks.evaluate import budget
    from tasks.store.checkpoint import load_config

    configs = {m: load_config(trained.checkpoint("diffusion", m)) for m in MODELS}
    rates = budget.calibrate(trained, SweepSpec(num_inference_steps=2), configs)
    assert set(rates) == {"unet-xs"} and rates["unet-xs"] > 0  # one preset, timed once
