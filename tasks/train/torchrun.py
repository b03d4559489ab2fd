"""One training on several processes: torchrun launched from a task, DDP in the trainer.

    summary = run_torchrun("clip", ClipTrainSpec(), workspace, nproc_per_node=2)

`run_torchrun` writes the spec into a run folder (`logs/torchrun/<kind>-<name>-<id>/` in
the workspace), starts `torchrun ... -m flows.torchrun_rank RUN_DIR` in a session of its own,
streams its output to `log` and to `RUN_DIR/torchrun.log`, and returns the summary that
rank 0 wrote beside it, once the checkpoint it names is on disk. Every rank runs
flows/torchrun_rank.py: it rebuilds the spec and calls the kind's trainer, which joins the
process group (tasks.train.trainer.init_distributed); rank 0 writes checkpoints, MLflow and the
summary.

- One node: `--standalone` with `nproc_per_node` processes; 0 means one per CUDA GPU. On
  CPU the ranks use gloo on loopback (GLOO_SOCKET_IFNAME=lo, OMP_NUM_THREADS=1).
- Several nodes: a `Rendezvous` (c10d: `--nnodes`, `--node_rank`, `--rdzv_endpoint`,
  `--rdzv_id`), the same on every node but the node rank; the workspace must be a folder
  every node sees (the checkpoint and the summary are written by the node that holds
  rank 0).
- A failure raises one `TorchrunError` naming the exit code, the first rank's error and the
  log's last lines. When the caller is interrupted (Ctrl-C, Prefect cancelling the run,
  an exception in `log`), torchrun and every worker are stopped; if the calling process
  dies, torchrun gets SIGTERM (PR_SET_PDEATHSIG) and stops its workers.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.runtime import progress
from tasks.runtime.devices import pick_device
from tasks.runtime.processes import alive, signal_alive, start_time
from tasks.runtime.reaper import descendants
from tasks.store.checkpoint import load_config
from tasks.store.files import atomic_write_bytes
from tasks.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]  # the checkout: ranks import marble from here
KINDS = ("autoencoder", "clip", "diffusion")
# What every rank runs: flows/torchrun_rank.py, which rebuilds the spec and calls the kind's
# trainer (the trainers are imported there, not by this launcher).
RANK_ENTRY = ("-m", "flows.torchrun_rank")
SPEC_FILE, SUMMARY_FILE, LOG_FILE = "spec.json", "summary.json", "torchrun.log"
PROGRESS = "marble-progress:"  # rank 0's progress lines, passed on to tasks.runtime.progress
RANK_ERROR = "marble-rank-error:"  # a rank's one-line error before it exits
TAIL_LINES = 30
GRACE_S = 10.0  # torchrun's own shutdown of its workers on SIGTERM, before SIGKILL
PR_SET_PDEATHSIG = 1


class TorchrunError(RuntimeError):
    """torchrun ended with a non-zero exit code (or without the summary of rank 0)."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet (torchrun's c10d rendezvous)."""

    endpoint: str  # HOST:PORT of the rendezvous store, on one of the nodes
    nnodes: int  # number of nodes
    node_rank: int  # this node's rank, 0 .. nnodes - 1
    run_id: str  # the same on every node of one run (also names the run folder)
    backend: str = "c10d"

    def __post_init__(self):
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rendezvous endpoint {self.endpoint!r} is not HOST:PORT")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"node_rank must lie in 0 .. nnodes - 1, got {self.node_rank} of {self.nnodes}"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.run_id):
            raise ValueError(f"rendezvous run_id {self.run_id!r}: letters, digits, '.', '_', '-'")


# ---------------------------------------------------------------------------- the command


def resolve_nproc(nproc_per_node: int) -> int:
    """Processes on this node: the number given, or (0) one per CUDA GPU."""
    import torch

    if nproc_per_node < 0:
        raise ValueError(f"nproc_per_node must be >= 0 (0: one per GPU), got {nproc_per_node}")
    if nproc_per_node:
        return nproc_per_node
    gpus = torch.cuda.device_count()
    if not gpus:
        raise ValueError("nproc_per_node 0 means one process per CUDA GPU, and there is none")
    return gpus


def torchrun_argv(
    nproc_per_node: int, entry: list[str], rendezvous: Rendezvous | None = None
) -> list[str]:
    """The torchrun command (as `python -m torch.distributed.run`, which `torchrun` is) that
    starts `entry` (`-m MODULE ARGS...` or `SCRIPT ARGS...`) on `nproc_per_node` processes."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]
    if rendezvous is None:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += [
            "--nnodes", str(rendezvous.nnodes),
            "--node_rank", str(rendezvous.node_rank),
            "--rdzv_backend", rendezvous.backend,
            "--rdzv_endpoint", rendezvous.endpoint,
            "--rdzv_id", rendezvous.run_id,
        ]  # fmt: skip
    return argv + ["--max_restarts", "0", *entry]


def torchrun_env(on_cpu: bool, standalone: bool, base: dict[str, str] | None = None) -> dict:
    """The environment of torchrun and its ranks: marble importable; on CPU one OpenMP
    thread per rank; for one node, gloo and the master on loopback. Values already set in
    `base` (default: this process's environment) win, except PYTHONPATH, which is extended."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
    if on_cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    if standalone:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
    return env


# ---------------------------------------------------------------------------- launching


def _die_with_parent(parent: int):
    """For preexec_fn: SIGTERM to the child when the thread that started it ends. The C
    function is looked up here, before the fork; the child only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def _process_tree(proc: subprocess.Popen) -> dict[int, int]:
    """pid -> start time of torchrun and everything below it now."""
    start = start_time(proc.pid)
    own = {proc.pid: start} if start is not None else {}
    return own | descendants(proc.pid)


def stop_tree(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop torchrun and every process below it. Each worker runs in a session of its own,
    so signalling torchrun's group is not enough: the tree is recorded first (an orphaned
    worker would leave it), torchrun gets SIGTERM (it stops its workers), the workers too,
    and whatever is left after `grace_s` gets SIGKILL."""
    tree = _process_tree(proc)
    signal_alive(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is None:
            tree |= descendants(proc.pid)
        if not any(alive(pid, start) for pid, start in tree.items()):
            break
        time.sleep(0.1)
    signal_alive(tree, signal.SIGKILL)
    proc.wait()


def _run_dir(workspace: Workspace, kind: str, name: str, rendezvous: Rendezvous | None) -> Path:
    run_id = rendezvous.run_id if rendezvous else time.strftime("%Y%m%dT%H%M%S")
    if rendezvous is None:
        run_id += "-" + uuid.uuid4().hex[:6]
    return workspace.root / "logs" / "torchrun" / f"{kind}-{name}-{run_id}"


def _check_launch(kind: str, spec, nproc: int, rendezvous: Rendezvous | None) -> bool:
    """Refuse what cannot run; returns whether the ranks train on CPU."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"unknown training kind {kind!r}; choose from {list(KINDS)}")
    device = pick_device(spec.train.device)
    if device.type == "cuda":
        if spec.train.device != "auto":
            raise ValueError(
                f"device {spec.train.device!r} under torchrun: use auto (each rank takes the "
                "GPU of its local rank)"
            )
        if nproc > torch.cuda.device_count():
            raise ValueError(
                f"{nproc} processes per node on CUDA, but this machine has "
                f"{torch.cuda.device_count()} GPU(s); use device cpu for gloo processes"
            )
    world = nproc * (rendezvous.nnodes if rendezvous else 1)
    if spec.train.batch_size // spec.train.grad_accum < world:
        raise ValueError(
            f"batch_size {spec.train.batch_size} over {spec.train.grad_accum} micro-batches "
            f"leaves some of the {world} ranks without images; raise it or use fewer processes"
        )
    return device.type == "cpu"


def run_torchrun(
    kind: str,
    spec,
    workspace: Workspace,
    nproc_per_node: int = 0,
    rendezvous: Rendezvous | None = None,
    log=print,
) -> dict:
    """Train `spec` (of `kind`) under torchrun on this node; returns rank 0's summary with
    `world_size`, `nproc_per_node` and `run_dir` added (see the module docstring)."""
    nproc = resolve_nproc(nproc_per_node)
    on_cpu = _check_launch(kind, spec, nproc, rendezvous)
    run_dir = _run_dir(workspace, kind, spec.name, rendezvous)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    payload = {"kind": kind, "spec": asdict(spec), "workspace": str(workspace.root)}
    atomic_write_bytes(run_dir / SPEC_FILE, json.dumps(payload, indent=2).encode())
    argv = torchrun_argv(nproc, [*RANK_ENTRY, str(run_dir)], rendezvous)
    env = torchrun_env(on_cpu, rendezvous is None)
    log(f"torchrun: {kind}/{spec.name} on {nproc} process(es) per node; log {run_dir / LOG_FILE}")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    rank_errors: list[str] = []
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )  # fmt: skip
        try:
            for line in proc.stdout:  # text mode: tqdm's "\r" ends a line too
                log_file.write(line)
                line, marker, counts = line.rstrip("\n").partition(PROGRESS)
                if marker:  # after a progress bar's fragment, when one came first
                    name, done, total = counts.rsplit(" ", 2)
                    progress.report(name.strip(), int(done), int(total))
                    if not line.strip():
                        continue
                if RANK_ERROR in line:
                    rank_errors.append(line.split(RANK_ERROR, 1)[1].strip())
                tail.append(line)
                log(line)
            code = proc.wait()
        except BaseException:  # interrupted or cancelled: nothing may outlive the task
            stop_tree(proc)
            raise
        finally:
            proc.stdout.close()
    stop_tree(proc, grace_s=0)  # normally nothing is left; a stray grandchild is not kept
    if code != 0:
        first = f": {rank_errors[0]}" if rank_errors else ""
        raise TorchrunError(
            f"torchrun training {kind}/{spec.name} failed with exit code {code}{first}\n"
            f"last lines of {run_dir / LOG_FILE}:\n" + "\n".join(tail)
        )
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.exists():
        if rendezvous is not None and rendezvous.node_rank != 0:
            return {"kind": kind, "name": spec.name, "run_dir": str(run_dir)}  # rank 0 elsewhere
        raise TorchrunError(f"torchrun training {kind}/{spec.name} ended without {summary_path}")
    summary = json.loads(summary_path.read_text())
    load_config(Path(summary["checkpoint"]))  # the checkpoint rank 0 names is there
    return summary | {"nproc_per_node": nproc, "run_dir": str(run_dir)}
