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

import hashlib
import re
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from eval import clip_score, cmmd, frechet, inception
from eval.bootstrap import resample_counts
from eval.inception import RESIZE_MODE, build_fid_inception
from eval.reconstruction import psnr_per_image
from models.sampling import SAMPLERS
from tasks.evaluate import point as sweep_point
from tasks.evaluate import report as sweep_report
from tasks.evaluate.fid_weights import load_fid_state_dict
from tasks.evaluate.point import (
    PointSettings,
    batched,
    generate_and_measure,
    metric_rows,
    point_metrics,
    reconstruction_metrics,
    reference_rows,
    reference_statistics,
    sample_columns,
)
from tasks.runtime.devices import pick_device
from tasks.shapes.render import render_scene, sample_scene
from tasks.store.checkpoint import (
    digest,
    load_autoencoder,
    load_clip_embedder,
    load_config,
    load_pipeline,
)
from tasks.store.digests import json_digest, source_digest
from tasks.store.files import atomic_file
from tasks.store.ids import pair_id
from tasks.store.images import save_grid, to_float
from tasks.store.pairs import ParquetPairs, decode_image
from tasks.store.tracking import Tracker, code_version
from tasks.store.workspace import Workspace

_MEASURING_CODE = (sys.modules[__name__], sweep_point, frechet, cmmd, clip_score, inception)
IMAGEN_GUIDANCE = (1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
HELDOUT_SEED = 1_000_003  # the built-in held-out scenes; training data uses small seeds
SEED_RULE = "int(sha1(f'{pair_id}:{repeat}')[:15], 16)"


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[str, ...] = ()  # diffusion checkpoint names; empty: every one there is
    guidance_scales: tuple[float, ...] = IMAGEN_GUIDANCE
    sampler: str = "ddim"
    num_inference_steps: int = 25
    num_samples: int = 10_000  # images per point (FID-10K)
    prompt_set: Literal["auto", "val", "heldout"] = "auto"  # auto: heldout on built-in data
    judge: str = "marble:judge-clip-base"  # "marble:NAME" or "openclip:ARCH:TAG"
    fid_weights: str | None = None  # a weights file; default: tasks.evaluate.fid_weights' places
    bootstrap: int = 100  # replicates per interval
    batch_size: int = 250
    seed: int = 0  # of the bootstrap resamples
    device: str = "auto"

    def __post_init__(self):
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be at least 2, got {self.num_samples}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {list(SAMPLERS)}")
        if not self.guidance_scales or min(self.guidance_scales) < 0:
            raise ValueError(f"guidance scales must be >= 0, got {self.guidance_scales}")
        if self.bootstrap < 1 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise ValueError("bootstrap, batch_size and num_inference_steps must be >= 1")


@dataclass
class Prompts:
    name: str  # "val" or "heldout"
    captions: list[str]  # (N,) one per generated image
    pair_ids: list[str]
    repeats: list[int]  # how often this caption was used before, 0 first
    reference: np.ndarray  # (M, H, W, 3) uint8 real images
    reference_captions: list[str]  # (M,)
    digest: str  # names the data: part of the reference statistics' cache key

    @property
    def seeds(self) -> list[int]:
        return [image_seed(p, r) for p, r in zip(self.pair_ids, self.repeats, strict=True)]


def image_seed(pid: str, repeat: int) -> int:
    """The initial-noise seed of an image: a function of its prompt's pair_id and repeat."""
    return int(hashlib.sha1(f"{pid}:{repeat}".encode()).hexdigest()[:15], 16)


# ---------------------------------------------------------------------------- prompts, reference


def build_prompts(workspace: Workspace, prompt_set: str, n: int) -> Prompts:
    builtin = (workspace.source / "truth.parquet").exists()
    if prompt_set == "auto":
        prompt_set = "heldout" if builtin else "val"
    if prompt_set == "heldout":
        if not builtin:
            raise ValueError(
                "prompt_set 'heldout' renders built-in scenes; this workspace has no built-in data (data/source/truth.parquet)"
            )
        return _heldout_prompts(workspace, n)
    val = ParquetPairs(workspace.pairs, "val")  # none there: an error that says to filter
    if len(val) == 0:
        raise ValueError(f"the val split of {workspace.pairs} is empty: no reference images")
    images = np.stack([decode_image(val.image_bytes(i)) for i in range(len(val))])
    m = len(val)
    return Prompts(
        name="val",
        captions=[val.captions[i % m] for i in range(n)],
        pair_ids=[val.pair_ids[i % m] for i in range(n)],
        repeats=[i // m for i in range(n)],
        reference=images,
        reference_captions=list(val.captions),
        digest=hashlib.sha1("\n".join(sorted(val.pair_ids)).encode()).hexdigest()[:16],
    )


def _heldout_prompts(workspace: Workspace, n: int) -> Prompts:
    first = ParquetPairs(workspace.pairs if workspace.pairs.exists() else workspace.raw)
    side = decode_image(first.image_bytes(0)).shape[0]
    scenes = [sample_scene(HELDOUT_SEED, i, 0.25) for i in range(n)]
    captions = [scene.caption(template) for scene, template in scenes]
    images = np.stack([render_scene(s, side, HELDOUT_SEED, i) for i, (s, _) in enumerate(scenes)])
    return Prompts(
        name="heldout",
        captions=captions,
        pair_ids=[
            pair_id(f"heldout://shapes/{HELDOUT_SEED}/{i}", c) for i, c in enumerate(captions)
        ],
        repeats=[0] * n,
        reference=images,
        reference_captions=captions,
        digest=f"shapes-heldout-{HELDOUT_SEED}-{n}-{side}",
    )


# ---------------------------------------------------------------------------- one point


def _table(rows: list[dict]) -> pa.Table:
    """Rows with different keys as one table: every key a column, None where a row lacks it."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------------------- the sweep


def resolve_models(workspace: Workspace, names: tuple[str, ...]) -> list[str]:
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
    return list(names) or found


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name)


def _inputs_key(ctx: dict, point: dict, guidance: float | None) -> str:
    """What a point's (or a reconstruction's) rows depend on: the checkpoints, the sampling
    and measuring settings, the prompts, the judge and FID weights, and this code."""
    spec, common = ctx["spec"], ctx["common"]
    return json_digest({
        "point": {k: v for k, v in point.items() if k.endswith("_digest") or k == "model"},
        "guidance": guidance, "sampler": spec.sampler, "steps": spec.num_inference_steps,
        "n": spec.num_samples, "bootstrap": spec.bootstrap, "seed": spec.seed,
        "prompts": ctx["prompts"].digest, "judge": common["judge_digest"],
        "fid_weights": common["fid_weights_digest"], "code": ctx["code"],
    })  # fmt: skip


def _evaluated(workspace: Workspace) -> dict[str, list[dict]]:
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


def _evaluate_point(workspace, pipe, name, config, guidance, ctx, parent_run_id, log) -> list[dict]:
    spec, prompts, common = ctx["spec"], ctx["prompts"], ctx["common"]
    point = {
        "point_id": f"{name}@{guidance:g}", "model": name, "guidance_scale": float(guidance),
        "text_encoder": config["text_encoder"], "unet": config["unet_preset"],
        "autoencoder": config["autoencoder"],
        "unet_digest": digest(workspace.checkpoint("diffusion", name)),
        "text_encoder_digest": config["text_encoder_digest"],
        "autoencoder_digest": config["autoencoder_digest"],
    }  # fmt: skip
    point["inputs_key"] = _inputs_key(ctx, point, guidance)
    if point["inputs_key"] in ctx["done"]:
        log(f"evaluate {point['point_id']}: skipped, evaluated before with the same inputs")
        return ctx["done"][point["inputs_key"]]
    t0 = time.perf_counter()
    settings = PointSettings(spec.sampler, spec.num_inference_steps, spec.batch_size)
    out = generate_and_measure(
        pipe, ctx["judge"], ctx["inception"], prompts.captions, prompts.seeds, guidance, settings,
        ctx["device"],
    )  # fmt: skip
    metrics = point_metrics(out, ctx["reference"], ctx["text_emb"], ctx["counts"])
    with Tracker(
        workspace, "marble-evaluate", point["point_id"], parent_run_id=parent_run_id
    ) as run:
        run.log_params(point | common)
        rows = metric_rows(metrics, point | common, run.run_id, out["img_per_s"])
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
def _autoencoder_rows(workspace: Workspace, name: str, ctx: dict) -> list[dict]:
    """The decoder axis on its own: the reference images through the autoencoder and back,
    against the references themselves (rFID, fd_clip of reconstructions, PSNR), as
    latent-diffusion reports for its autoencoders."""
    prompts, device, spec = ctx["prompts"], ctx["device"], ctx["spec"]
    identity = {
        "model": f"autoencoder/{name}",
        "autoencoder_digest": digest(workspace.checkpoint("autoencoder", name)),
    }
    key = _inputs_key(ctx, identity, None)
    if key in ctx["done"]:
        return ctx["done"][key]
    autoencoder = load_autoencoder(workspace, name, device)
    recon, psnr = [], []
    for start in range(0, len(prompts.reference), spec.batch_size):
        x = to_float(prompts.reference[start : start + spec.batch_size]).to(device)
        y = autoencoder.decode(autoencoder.encode(x).mode()).clamp(-1, 1)
        recon.append(y)
        psnr.append(psnr_per_image(y, x).cpu().numpy())
    counts = resample_counts(len(prompts.reference), spec.bootstrap, spec.seed)
    metrics = reconstruction_metrics(
        torch.cat(recon), np.concatenate(psnr), ctx["inception"], ctx["judge"],
        ctx["reference"], counts, device,
    )  # fmt: skip
    meta = ctx["common"] | identity | {
        "point_id": identity["model"], "autoencoder": name, "n": len(prompts.reference),
        "guidance_scale": None, "inputs_key": key,
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

    @property
    def points(self) -> list[tuple[str, float]]:
        """(model, guidance) of every grid point, in order."""
        return [(m, float(g)) for m in self.models for g in self.spec.guidance_scales]


def _check_judge(judge_id: str, judge_digest: str, configs: dict[str, dict]) -> None:
    for name, config in configs.items():
        if (
            judge_id == f"marble:{config['text_encoder']}"
            or judge_digest == config["text_encoder_digest"]
        ):
            raise ValueError(
                f"the judge {judge_id} is the text encoder of {name}; choose a judge that "
                "no model under test was conditioned on"
            )


def _judge_digest(workspace: Workspace, judge_id: str) -> str:
    if judge_id.startswith("marble:"):
        return digest(workspace.checkpoint("clip", judge_id.removeprefix("marble:")))
    return judge_id


# The measuring context of the sweep last planned or evaluated in this process (judge,
# Inception, prompts, reference statistics): built once per process, reused by each point.
_CONTEXT: dict[str, dict] = {}


def _context(plan: SweepPlan, workspace: Workspace) -> dict:
    key = f"{workspace.root}:{plan.sweep_id}"
    if key not in _CONTEXT:
        _CONTEXT.clear()
        _CONTEXT[key] = _build_context(plan.spec, workspace, plan.common)
    return _CONTEXT[key]


def _build_context(spec: SweepSpec, workspace: Workspace, common: dict) -> dict:
    device = pick_device(spec.device)
    judge, _ = load_clip_embedder(workspace, spec.judge, device)
    state, _ = load_fid_state_dict(Path(spec.fid_weights) if spec.fid_weights else None)
    inception = build_fid_inception(state).to(device)
    prompts = build_prompts(workspace, spec.prompt_set, spec.num_samples)
    return {
        "done": _evaluated(workspace), "code": source_digest(*_MEASURING_CODE),
        "spec": spec, "prompts": prompts, "common": common, "judge": judge,
        "inception": inception, "device": device, "pipelines": {},
        "reference": reference_statistics(
            workspace.cache / "reference", prompts, judge, common["judge_digest"], inception,
            common["fid_weights_digest"], device,
        ),
        "text_emb": batched(judge.texts, prompts.captions, spec.batch_size),
        "counts": resample_counts(spec.num_samples, spec.bootstrap, spec.seed),
    }  # fmt: skip


def plan_sweep(spec: SweepSpec, workspace: Workspace) -> SweepPlan:
    """Check the grid and the judge, measure the reference side (real images with the
    judge, the autoencoders' reconstructions) and open the sweep's MLflow parent run."""
    models = resolve_models(workspace, spec.models)
    configs = {m: load_config(workspace.checkpoint("diffusion", m)) for m in models}
    device = pick_device(spec.device)
    _, judge_id = load_clip_embedder(workspace, spec.judge, device)  # a bad judge: here
    judge_digest = _judge_digest(workspace, judge_id)
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
    ctx = _build_context(spec, workspace, common)
    prompts = ctx["prompts"]
    common |= {"prompt_set": prompts.name, "prompts_repeat": max(prompts.repeats) > 0}
    rows = reference_rows(
        ctx["judge"], prompts, ctx["reference"], common, spec.seed, spec.bootstrap
    )
    for name in sorted({config["autoencoder"] for config in configs.values()}):
        rows += _autoencoder_rows(workspace, name, ctx)
    _write_parquet(_table(rows), workspace.evaluations / f"{sweep_id}-reference.parquet")
    with Tracker(workspace, "marble-evaluate", f"sweep-{sweep_id}") as parent:
        parent.log_params({"sweep": asdict(spec) | {"models": models}, "prompt_set": prompts.name})
        parent.log_metrics({f"{r['model']}/{r['metric']}": r["value"] for r in rows}, step=0)
    plan = SweepPlan(spec, sweep_id, tuple(models), configs, common, parent.run_id, tuple(rows))
    _CONTEXT.clear()
    _CONTEXT[f"{workspace.root}:{sweep_id}"] = ctx  # the points evaluated here reuse it
    return plan


def evaluate_point(plan: SweepPlan, model: str, guidance: float, workspace: Workspace, log=print):
    """Sample and measure one grid point (skipped when evaluated before with the same
    inputs); its rows, also written to results/ and logged as a child MLflow run."""
    ctx = _context(plan, workspace)
    pipelines = ctx["pipelines"]
    if model not in pipelines:
        pipelines.clear()  # one model's pipeline in memory at a time
        pipelines[model] = load_pipeline(workspace, model, ctx["device"])
    return _evaluate_point(
        workspace, pipelines[model], model, plan.configs[model], guidance, ctx,
        plan.mlflow_run_id, log,
    )  # fmt: skip


def finish_sweep(
    plan: SweepPlan, point_rows: list[list[dict]], workspace: Workspace, log=print
) -> dict:
    """The summary of a sweep from every point's rows: the report (effects of each size step
    against their intervals), the Pareto plot, both logged to the parent run."""
    rows = list(plan.reference_rows) + [row for part in point_rows for row in part]
    report = sweep_report.report(rows, workspace.plots / f"pareto-{plan.sweep_id}.png")
    with Tracker(workspace, "marble-evaluate", "", run_id=plan.mlflow_run_id) as parent:
        parent.log_artifact(report["plot"])
        parent.log_text("\n".join(report["lines"]), "summary.txt")
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
