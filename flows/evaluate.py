"""Flow `evaluate`: the sweep over trained models x guidance scales, after the judge CLIP.

The default judge (`marble:judge-clip-base`) is trained on the kept pairs first, as its own
task, when the workspace has none; a rerun finds it trained and goes straight to the sweep.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.params import EvaluateParams
from flows.train import clip_task
from tasks.evaluate import SweepSpec, run_sweep
from tasks.train_clip import judge_clip_spec
from tasks.workspace import Workspace


@task(name="evaluate-sweep", cache_policy=NO_CACHE)
def sweep_task(spec: SweepSpec, workspace: Workspace) -> dict:
    return run_sweep(spec, workspace)


def run_evaluation(params: EvaluateParams, workspace: Workspace) -> dict:
    """Train the judge when it is the default marble judge, then sweep (inside a flow)."""
    if params.trains_judge:
        preset = params.judge.removeprefix("marble:judge-")
        clip_task(judge_clip_spec(params.judge_steps, preset), workspace)
    summary = sweep_task(params.to_spec(), workspace)  # it prints the summary lines
    print(f"Pareto plot: {summary['plot']}")
    return summary


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: EvaluateParams = EvaluateParams(), home: str | None = None) -> dict:
    """Sample every trained model at every guidance scale and measure it."""
    return run_evaluation(params, Workspace.from_env(home))
