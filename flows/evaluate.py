"""Flows `evaluate` and `evaluate-nightly`: the sweep over trained models x guidance scales,
after the judge CLIP.

The default judge (`marble:judge-clip-base`) is trained on the kept pairs first, as its own
task, when the workspace has none; a rerun finds it trained and goes straight to the sweep.
The nightly flow runs the same sweep (FID-10K by default; points already evaluated with the
same checkpoints are skipped) and compares every value with the night before.
"""

from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows import fanout
from flows.artifacts import sweep_artifacts, with_progress
from flows.fanout import FanOutParams
from flows.params import EvaluateParams
from flows.train import TASKS, on_device
from tasks.evaluate import budget, nightly
from tasks.evaluate.measuring import resolve_models
from tasks.evaluate.spec import SweepSpec
from tasks.evaluate.sweep import (
    SweepPlan,
    evaluate_point,
    finish_sweep,
    plan_sweep,
)
from tasks.store.checkpoint import load_config
from tasks.store.tracking import Tracker
from tasks.store.workspace import Workspace
from tasks.train.clip import judge_clip_spec

DAY_S = 24 * 3600.0


@task(name="plan-sweep", cache_policy=NO_CACHE)
def plan_task(spec: SweepSpec, workspace: Workspace) -> SweepPlan:
    return plan_sweep(spec, workspace)


@task(name="evaluate-point", cache_policy=NO_CACHE, task_run_name="point-{model}@{guidance}")
@with_progress("evaluation")
def point_task(plan: SweepPlan, model: str, guidance: float, workspace: Workspace) -> list[dict]:
    return evaluate_point(plan, model, guidance, workspace)


@task(name="sweep-summary", cache_policy=NO_CACHE)
def finish_task(plan: SweepPlan, point_rows: list[list[dict]], workspace: Workspace) -> dict:
    return finish_sweep(plan, point_rows, workspace)  # it prints the summary


def run_evaluation(
    params: EvaluateParams,
    workspace: Workspace,
    fan: FanOutParams = FanOutParams(),
    spec: SweepSpec | None = None,
) -> dict:
    """Train the judge when it is the default marble judge, then sweep (inside a flow): the
    plan, every grid point (in turn, or fanned out over Dask workers), the summary. `spec`:
    the sweep to run instead of the one `params` ask for (a nightly cut to its time)."""
    if params.trains_judge:
        preset = params.judge.removeprefix("marble:judge-")
        judge = judge_clip_spec(params.judge_steps, preset)
        on_device(TASKS["clip"], judge.train.device)(judge, workspace)
    spec = spec or params.to_spec()
    plan = on_device(plan_task, spec.device)(spec, workspace)
    calls = [(plan, model, guidance, workspace) for model, guidance in plan.points]
    point_rows = fanout.fan_out(on_device(point_task, spec.device), calls, fan, "sweep-points")
    summary = finish_task(plan, point_rows, workspace)
    print(f"Pareto plot: {summary['plot']}")
    return summary


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    params: EvaluateParams = EvaluateParams(),
    home: str | None = None,
    fan_out: FanOutParams = FanOutParams(),
) -> dict:
    """Sample every trained model at every guidance scale and measure it."""
    workspace = Workspace.from_env(home)
    summary = run_evaluation(params, workspace, fan_out)
    sweep_artifacts(summary, workspace)
    return summary


@task(name="compare-with-last-night", cache_policy=NO_CACHE)
def compare_task(summary: dict, workspace: Workspace) -> tuple[list[dict], str]:
    """Compare tonight's values with the last nightly record, then record tonight's; mark
    the sweep's MLflow run with the verdict."""
    previous = nightly.previous_record(workspace)
    spreads = nightly.known_spreads(summary["training_spreads"], previous)
    comparison = nightly.compare(previous["rows"] if previous else [], summary["rows"], spreads)
    nightly.write_record(workspace, summary["sweep_id"], summary["rows"], spreads)
    message = nightly.verdict(comparison)
    statuses = {c["status"] for c in comparison}
    status = next((s for s in ("regression", "improvement") if s in statuses), "unchanged")
    with Tracker(workspace, "marble-evaluate", "", run_id=summary["mlflow_run_id"]) as run:
        run.set_tags({"nightly": status, "nightly.verdict": message[:5000]})
        run.log_text(nightly.as_markdown(comparison), "nightly.md")
    return comparison, message


def _between_runs_s() -> float:
    """Seconds between two runs of this flow run's deployment schedule (a cron); a day when
    it runs outside a scheduled deployment."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from cronsim import CronSim
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    if deployment.id is None:
        return DAY_S
    with get_client(sync_client=True) as client:
        schedules = client.read_deployment(deployment.id).schedules
    crons = [s.schedule for s in schedules if getattr(s.schedule, "cron", None)]
    if not crons:
        return DAY_S
    zone = ZoneInfo(crons[0].timezone or "UTC")
    times = CronSim(crons[0].cron, datetime.now(zone))
    first = next(times)
    return (next(times) - first).total_seconds()


@task(name="fit-the-night", cache_policy=NO_CACHE)
def fit_task(params: EvaluateParams, workspace: Workspace, hours: float | None) -> budget.Fit:
    """The sweep cut to the time it has: `hours`, else the time between two scheduled runs,
    times budget.MARGIN."""
    spec = params.to_spec()
    available = (hours * 3600 if hours else _between_runs_s()) * budget.MARGIN
    models = resolve_models(workspace, spec.models, spec.data_variants)
    configs = {m: load_config(workspace.checkpoint("diffusion", m)) for m in models}
    rates = budget.measured_rates(workspace) or budget.calibrate(workspace, spec, configs)
    presets = [configs[m]["unet_preset"] for m in models]
    fitted = budget.fit(spec, presets, rates, available)
    return dataclasses.replace(fitted, spec=dataclasses.replace(fitted.spec, models=tuple(models)))


@flow(name="evaluate-nightly", log_prints=True)
def evaluate_nightly_flow(
    params: EvaluateParams = EvaluateParams(),
    home: str | None = None,
    fan_out: FanOutParams = FanOutParams(),
    hours: float | None = None,
):
    """The scheduled sweep (FID-10K by default) on the trained models, cut to fit the time
    until the next run (`hours`, else its schedule's interval), compared with the night
    before: what moved beyond the interval of a change between runs is marked a regression
    or an improvement in the table artifact, the sweep's MLflow tags and the final message.
    The deployment runs one at a time: a run due while one runs is cancelled."""
    workspace = Workspace.from_env(home)
    fitted = fit_task(params, workspace, hours)
    print(fitted.line)
    summary = run_evaluation(params, workspace, fan_out, fitted.spec)
    summary["lines"] = [fitted.line, *summary["lines"]]
    with Tracker(workspace, "marble-evaluate", "", run_id=summary["mlflow_run_id"]) as run:
        run.set_tags({"nightly.fit": fitted.line[:5000]})
    comparison, message = compare_task(summary, workspace)
    sweep_artifacts(summary, workspace, comparison)
    print(message)
    return Completed(message=message, data=summary | {"comparison": comparison})
