"""Evaluation sweeps: sample every (model, guidance) point of a grid on the same prompts and
the same initial noise, and measure each point against reference images.

    run_sweep(SweepSpec(...), workspace) -> summary dict

Metrics per point, each with a seeded bootstrap interval over the generated samples (the
same resamples at every point, so two points can be compared pairwise):
- `fid`: Fréchet distance of the standard Inception's pool3 features (eval/inception.py);
- `fd_clip`, `cmmd`: Fréchet distance and CMMD in the judge CLIP's image-embedding space;
- `clip_score`: the judge's 100 · max(cos, 0) of each image with its prompt;
- `attr_<attribute>`, `attr_all_correct` on the built-in data (eval/detector.py).

Prompts and reference images ("prompt_set"): "val", the val split of the kept pairs (captions
repeat with fresh seeds when N exceeds it, and the rows say so), or "heldout", for the
built-in data: N fresh scenes rendered with a seed training never used, true captions.
Each image's seed is derived from its prompt's pair_id and repeat index. Reference statistics
are cached under cache/reference/, keyed by data digest, extractor digest, resolution and N.

Outputs (each file written whole, then renamed into place; one per point, so two sweeps at
once lose nothing): results/evaluations/<sweep>-<point>.parquet (a row per metric),
results/samples/<sweep>-<point>.parquet (a row per image), results/plots/pareto-<sweep>.png,
and an MLflow parent run per sweep (experiment marble-evaluate) with a child run per point.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from eval import clip_score, cmmd, frechet, inception
from eval.bootstrap import resample_counts
from eval.inception import RESIZE_MODE
from eval.reconstruction import psnr_per_image
from models.pipeline import TextToImage
from tasks.evaluate import measuring, prompts
from tasks.evaluate import point as sweep_point
from tasks.evaluate.fid_weights import load_fid_state_dict
from tasks.evaluate.measuring import Measuring, build_measuring, inputs_key, resolve_models
from tasks.evaluate.pareto import pareto_plot
from tasks.evaluate.point import (
    PointSettings,
    floor_metrics,
    generate_and_measure,
    metric_rows,
    point_metrics,
    reconstruction_metrics,
    reference_rows,
    sample_columns,
)
from tasks.evaluate.prompts import SEED_RULE, check_reference
from tasks.evaluate.report import FIGURES, data_lines, summary_lines, verdict_table
from tasks.evaluate.spec import SweepSpec
from tasks.runtime.devices import pick_device
from tasks.store.checkpoint import digest, load_config
from tasks.store.digests import source_digest
from tasks.store.files import atomic_file
from tasks.store.images import save_grid, to_float
from tasks.store.loaders import (
    clip_weights_digest,
    load_autoencoder,
    load_clip_embedder,
    load_pipeline,
    marble_clip,
)
from tasks.store.tracking import Tracker, code_version
from tasks.store.workspace import DEFAULT_VARIANT, Workspace

# ---------------------------------------------------------------------------- one point


def _table(rows: list[dict]) -> pa.Table:
    """Rows with different keys as one table: every key a column, None where a row lacks it."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------------------- the sweep


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name)


def _evaluate_point(
    m: Measuring,
    *,
    workspace: Workspace,
    pipe: TextToImage,
    name: str,
    config: dict,
    guidance: float,
    parent_run_id: str,
    log,
) -> list[dict]:
    spec, prompts, common = m.spec, m.prompts, m.common
    replicate = int(config.get("replicate", 0))  # training replicate of the grid point
    text = config["text_encoder"]  # a replicate's text encoder is its replicate too
    text_base = text.removesuffix(f"-r{replicate}") if replicate else text
    variant = config.get("data_variant", DEFAULT_VARIANT)
    suffix = "" if variant == DEFAULT_VARIANT else f"_{variant}"
    point = {
        "point_id": f"{name}@{guidance:g}", "model": name, "guidance_scale": float(guidance),
        "grid_point": f"{text_base}_{config['unet_preset']}_{config['autoencoder']}{suffix}",
        "data_variant": variant, "training_set_digest": config.get("training_set_digest"),
        "replicate": replicate, "text_encoder": text_base, "text_encoder_checkpoint": text,
        "unet": config["unet_preset"], "autoencoder": config["autoencoder"],
        "unet_digest": digest(workspace.checkpoint("diffusion", name)),
        "text_encoder_digest": config["text_encoder_digest"],
        "autoencoder_digest": config["autoencoder_digest"],
    }  # fmt: skip
    point["inputs_key"] = inputs_key(m, point, guidance)
    if point["inputs_key"] in m.done:
        log(f"evaluate {point['point_id']}: skipped, evaluated before with the same inputs")
        return m.done[point["inputs_key"]]
    t0 = time.perf_counter()
    settings = PointSettings(spec.sampler, spec.num_inference_steps, spec.batch_size)
    out = generate_and_measure(
        pipe, m.judge, m.inception, prompts.captions, prompts.seeds, guidance, settings, m.device,
    )  # fmt: skip
    metrics = point_metrics(out, m.reference, m.text_emb, m.counts, m.prompts.groups())
    timing = {"point_s": time.perf_counter() - t0}  # what a nightly's time budget reads
    with Tracker(
        workspace, "marble-evaluate", point["point_id"], parent_run_id=parent_run_id
    ) as run:
        run.log_params(point | common)
        rows = metric_rows(metrics, point | common | timing, run.run_id, out["img_per_s"])
        run.log_metrics(
            {r["metric"]: r["value"] for r in rows} | {"img_per_s": out["img_per_s"]}, step=0
        )
        run.log_metrics(
            {f"{r['metric']}_ci_{e}": r[f"ci_{e}"] for r in rows for e in ("low", "high")}, step=0
        )
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(save_grid(out["grid"], Path(tmp) / "samples.png", ncol=8))
    stem = f"{common['sweep_id']}-{_safe(point['point_id'])}.parquet"
    _write_parquet(_table(rows), workspace.evaluations / stem)
    samples = pa.table(sample_columns(point | common, prompts, metrics))
    _write_parquet(samples, workspace.samples / stem)
    values = {r["metric"]: r["value"] for r in rows}
    log(
        f"evaluate {point['point_id']}: fid {values['fid']:.2f}, fd_clip {values['fd_clip']:.3f}, "
        f"clip_score {values['clip_score']:.2f}, sampling {out['img_per_s']:.1f} img/s, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return rows


@torch.no_grad()
def _autoencoder_rows(m: Measuring, workspace: Workspace, name: str) -> list[dict]:
    """The decoder axis on its own: the reference images through the autoencoder and back,
    against the references themselves (rFID, fd_clip of reconstructions, PSNR), as
    latent-diffusion reports for its autoencoders."""
    prompts, device, spec = m.prompts, m.device, m.spec
    identity = {
        "model": f"autoencoder/{name}",
        "autoencoder_digest": digest(workspace.checkpoint("autoencoder", name)),
    }
    key = inputs_key(m, identity, None)
    if key in m.done:
        return m.done[key]
    autoencoder = load_autoencoder(workspace, name, device)
    recon, psnr = [], []
    for start in range(0, len(prompts.reference), spec.batch_size):
        x = to_float(prompts.reference[start : start + spec.batch_size]).to(device)
        y = autoencoder.decode(autoencoder.encode(x).mode()).clamp(-1, 1)
        recon.append(y)
        psnr.append(psnr_per_image(y, x).cpu().numpy())
    counts = resample_counts(len(prompts.reference), spec.bootstrap, spec.seed)
    metrics = reconstruction_metrics(
        torch.cat(recon), np.concatenate(psnr), m.inception, m.judge, m.reference, counts, device,
    )  # fmt: skip
    meta = m.common | identity | {
        "point_id": identity["model"], "autoencoder": name, "n": len(prompts.reference),
        "guidance_scale": None, "inputs_key": key,
    }  # fmt: skip
    return metric_rows(metrics, meta, None, None)


def _measuring_code() -> str:
    """Digest of the code whose change changes a measurement."""
    modules = (sys.modules[__name__], measuring, prompts, sweep_point)
    return source_digest(*modules, frechet, cmmd, clip_score, inception)


def _floor_rows(m: Measuring, workspace: Workspace) -> list[dict]:
    """fid, fd_clip and cmmd of real images against real images at the sweep's N: the floor
    each model's distance is read against."""
    floor = m.prompts.floor
    if floor is None:
        return []
    counts = resample_counts(len(floor.second), m.spec.bootstrap, m.spec.seed)
    keys = {"data": m.prompts.digest, "judge": m.common["judge_digest"]}
    keys["fid_weights"] = m.common["fid_weights_digest"]
    same = floor.first is m.prompts.reference  # the held-out floor: no second extraction
    metrics = floor_metrics(
        floor, m.judge, m.inception, m.device, counts, workspace.cache / "reference", keys,
        reference=m.reference if same else None,
    )  # fmt: skip
    meta = m.common | {
        "point_id": "floor", "model": "floor", "n": len(floor.second), "guidance_scale": None,
        "floor": floor.how,
    }  # fmt: skip
    return metric_rows(metrics, meta, None, None)


@dataclass(frozen=True)
class SweepPlan:
    """What every point of a sweep shares, fixed before the first point runs: it travels to
    wherever a point is evaluated (another process, a Dask worker)."""

    spec: SweepSpec
    sweep_id: str
    models: tuple[str, ...]
    configs: dict[str, dict]  # diffusion checkpoint name -> its config.json
    common: dict  # the columns every row of the sweep carries
    mlflow_run_id: str  # the sweep's parent run; each point is a child run
    reference_rows: tuple[dict, ...]  # real images with the judge, the autoencoders
    no_floor: str = ""  # why the sweep has no floor rows, when it has none
    data_lines: tuple[str, ...] = ()  # reference images in training; each training set

    @property
    def points(self) -> list[tuple[str, float]]:
        """(model, guidance) of every grid point, in order."""
        return [(m, float(g)) for m in self.models for g in self.spec.guidance_scales]


def _check_judge(judge_id: str, judge_digest: str, configs: dict[str, dict]) -> None:
    for name, config in configs.items():
        if (
            marble_clip(judge_id) == config["text_encoder"]
            or judge_digest == config["text_encoder_digest"]
        ):
            raise ValueError(
                f"the judge {judge_id} is the text encoder of {name}; choose a judge that "
                "no model under test was conditioned on"
            )


@dataclass
class _ProcessCache:
    """The measuring context of the sweep last planned or evaluated in this process, and the
    one pipeline in memory: a Dask worker or a sequential run evaluates many points of one
    sweep and loads each model once."""

    key: str = ""
    measuring: Measuring | None = None
    model: str = ""
    pipeline: TextToImage | None = None

    def measuring_for(self, plan: SweepPlan, workspace: Workspace) -> Measuring:
        key = f"{workspace.root}:{plan.sweep_id}"
        if key != self.key or self.measuring is None:
            self.keep(key, build_measuring(plan.spec, workspace, plan.common, _measuring_code()))
        return self.measuring

    def keep(self, key: str, measuring: Measuring) -> None:
        self.key, self.measuring, self.model, self.pipeline = key, measuring, "", None

    def pipeline_for(self, workspace: Workspace, model: str, device) -> TextToImage:
        if model != self.model or self.pipeline is None:
            self.pipeline = None  # one model's pipeline in memory at a time
            self.pipeline = load_pipeline(workspace, model, device)
            self.model = model
        return self.pipeline


_CACHE = _ProcessCache()


def plan_sweep(spec: SweepSpec, workspace: Workspace) -> SweepPlan:
    """Check the grid and the judge, measure the reference side (real images with the
    judge, the autoencoders' reconstructions) and open the sweep's MLflow parent run."""
    models = resolve_models(workspace, spec.models, spec.data_variants)
    configs = {m: load_config(workspace.checkpoint("diffusion", m)) for m in models}
    device = pick_device(spec.device)
    _, judge_id = load_clip_embedder(workspace, spec.judge, device)  # a bad judge: here
    judge_digest = clip_weights_digest(workspace, judge_id) or judge_id
    _check_judge(judge_id, judge_digest, configs)
    _, fid_digest = load_fid_state_dict(Path(spec.fid_weights) if spec.fid_weights else None)
    sweep_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    common = {
        "sweep_id": sweep_id, "sampler": spec.sampler,
        "num_inference_steps": spec.num_inference_steps, "n": spec.num_samples,
        "n_bootstrap": spec.bootstrap, "seeds": SEED_RULE, "judge": judge_id,
        "judge_digest": judge_digest, "fid_weights_digest": fid_digest, "resize": RESIZE_MODE,
        "code_version": code_version(),
    }  # fmt: skip
    m = build_measuring(spec, workspace, common, _measuring_code())
    prompts = m.prompts
    common |= {"prompt_set": prompts.name, "prompts_repeat": max(prompts.repeats) > 0}
    m = replace(m, common=common)
    rows = reference_rows(m.judge, prompts, m.reference, common, spec.seed, spec.bootstrap)
    rows += _floor_rows(m, workspace)
    for name in sorted({config["autoencoder"] for config in configs.values()}):
        rows += _autoencoder_rows(m, workspace, name)
    _write_parquet(_table(rows), workspace.evaluations / f"{sweep_id}-reference.parquet")
    variants = sorted({c.get("data_variant", DEFAULT_VARIANT) for c in configs.values()})
    in_train = {v: check_reference(workspace, prompts.reference, v) for v in variants}
    with Tracker(workspace, "marble-evaluate", f"sweep-{sweep_id}") as parent:
        parent.log_params(
            {"sweep": asdict(spec) | {"models": models}, "prompt_set": prompts.name}
            | {"reference_in_train": in_train}
        )
        parent.log_metrics({f"{r['model']}/{r['metric']}": r["value"] for r in rows}, step=0)
    plan = SweepPlan(
        spec, sweep_id, tuple(models), configs, common, parent.run_id, tuple(rows),
        "" if prompts.floor else prompts.no_floor, data_lines(workspace, in_train),
    )  # fmt: skip
    _CACHE.keep(f"{workspace.root}:{sweep_id}", m)  # the points evaluated here reuse it
    return plan


def evaluate_point(plan: SweepPlan, model: str, guidance: float, workspace: Workspace, log=print):
    """Sample and measure one grid point (skipped when evaluated before with the same
    inputs); its rows, also written to results/ and logged as a child MLflow run."""
    m = _CACHE.measuring_for(plan, workspace)
    return _evaluate_point(
        m,
        workspace=workspace,
        pipe=_CACHE.pipeline_for(workspace, model, m.device),
        name=model,
        config=plan.configs[model],
        guidance=guidance,
        parent_run_id=plan.mlflow_run_id,
        log=log,
    )


def finish_sweep(
    plan: SweepPlan, point_rows: list[list[dict]], workspace: Workspace, log=print
) -> dict:
    """The summary of a sweep from every point's rows: the report (floors, a verdict per axis
    and metric), the Pareto plot and the verdicts table, logged to the parent run."""
    rows = list(plan.reference_rows) + [row for part in point_rows for row in part]
    lines, found = summary_lines(rows, dict(plan.spec.target_effects), plan.no_floor)
    lines = [*plan.data_lines, *lines]
    plot = pareto_plot(rows, workspace.plots / f"pareto-{plan.sweep_id}.png")
    report = {"plot": plot, "lines": lines, **found}
    table = verdict_table(plan.sweep_id, found)
    if table:
        _write_parquet(_table(table), workspace.verdicts / f"{plan.sweep_id}.parquet")
    with Tracker(workspace, "marble-evaluate", "", run_id=plan.mlflow_run_id) as parent:
        parent.log_artifact(report["plot"])
        parent.log_text("\n".join(report["lines"]), "summary.txt")
        parent.log_metrics(
            {
                f"verdict/{v['axis']}/{v['metric']}/{key}": v[key]
                for v in found["verdicts"]
                for key in FIGURES
                if v[key] is not None
            },
            step=0,
        )
    for line in report["lines"]:
        log(line)
    points = [
        {k: v for k, v in row.items() if k != "replicates"}
        for row in rows
        if row.get("guidance_scale") is not None
    ]
    return {
        "sweep_id": plan.sweep_id, "mlflow_run_id": plan.mlflow_run_id,
        "models": list(plan.models), "rows": points, **report,
    }  # fmt: skip


def run_sweep(spec: SweepSpec, workspace: Workspace, log=print) -> dict:
    """The whole sweep in this process: plan, every point in turn, summary."""
    plan = plan_sweep(spec, workspace)
    parts = [evaluate_point(plan, m, g, workspace, log) for m, g in plan.points]
    return finish_sweep(plan, parts, workspace, log)
