"""Trainers: a few steps of each, overfitting, exact resume after SIGKILL, NaN handling, DDP,
and what lands in MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.clip import CLIP_PRESETS, build_clip
from tasks.store.checkpoint import CheckpointDir, load_config, load_state
from tasks.store.loaders import load_pipeline
from tasks.store.tracking import Tracker, training_tracker
from tasks.store.workspace import Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train.clip import ClipTrainSpec, lit_config, train_clip
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion
from tasks.train.trainer import NonFiniteLossError, TrainConfig, train
from tests.training_helpers import make_workspace, null_tracker, tiny_train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One workspace with an autoencoder, a CLIP and a diffusion model, a few steps each."""
    workspace = make_workspace(tmp_path_factory.mktemp("trained"))
    checks = []  # what the autoencoder's extra validation saw

    def check(ema, step):
        checks.append((step, ema.training))
        return {"extra_check": float(step)}

    summaries = {
        "autoencoder": train_autoencoder(
            AutoencoderTrainSpec(train=tiny_train(val_every=4)), workspace, validate_fn=check
        ),
        "identity": train_autoencoder(AutoencoderTrainSpec(preset="identity"), workspace),
        "clip": train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0)), workspace),
    }
    summaries["diffusion"] = train_diffusion(DiffusionTrainSpec(train=tiny_train()), workspace)
    summaries["autoencoder_checks"] = checks
    return workspace, summaries


def test_the_autoencoder_takes_an_extra_validation(trained):
    """bench/autoencoder_steps.py reads reconstructions back through `validate_fn`: it runs at
    every validation (step 4 of 6, and the last) on the EMA model in eval mode, and what it
    returns joins the trainer's own metrics."""
    _, s = trained
    assert s["autoencoder_checks"] == [(4, False), (6, False)]
    assert s["autoencoder"]["extra_check"] == 6.0 and "val_psnr" in s["autoencoder"]


def test_each_trainer_writes_a_checkpoint(trained):
    workspace, s = trained
    ae = load_config(workspace.checkpoints / "autoencoder" / "kl-f4")
    assert len(ae["autoencoder"]["latent_mean"]) == 4 and len(ae["autoencoder"]["latent_std"]) == 4
    assert load_state(workspace.checkpoints / "autoencoder" / "kl-f4")["step"] == 6
    assert (
        len(
            load_config(workspace.checkpoints / "autoencoder" / "identity")["autoencoder"][
                "latent_std"
            ]
        )
        == 3
    )
    assert {"val_i2t_r1", "val_t2i_r5"} <= set(s["clip"])
    assert "val_loss" in s["diffusion"]
    pipe = load_pipeline(workspace, s["diffusion"]["name"])
    images = pipe.generate(
        ["a small red circle on the left, gray background"], [0], num_inference_steps=3
    )
    assert images.shape == (1, 3, 32, 32) and images.abs().max() <= 1


def test_encoded_captions_end_at_the_longest_caption(trained):
    """The training set's cached text states stop at the longest caption's EOT (the rest is
    padding every caption masks) and equal the frozen text tower's own up to there."""
    from tasks.store.loaders import load_conditioning
    from tasks.train.diffusion import encode_training_set

    workspace, _ = trained
    cache = encode_training_set(workspace, DiffusionTrainSpec(), torch.device("cpu"))
    context, mask = cache["context"], cache["mask"]
    length = mask.shape[1]
    assert mask[:, -1].any() and mask.sum(1).max() == length < 32  # padding went, no caption
    assert torch.equal(mask, mask.cummin(dim=1).values)  # each row: True up to its EOT
    parts = load_conditioning(workspace, "clip-tiny", "kl-f4", torch.device("cpu"))
    full, full_mask = parts.text(parts.tokenizer(cache["captions"]))
    assert not full_mask[:, length:].any()
    torch.testing.assert_close(context, full[:, :length], rtol=0, atol=1e-5)


def test_rerun_of_a_finished_training_is_a_no_op(trained):
    workspace, s = trained
    before = load_file(workspace.checkpoints / "clip" / "clip-tiny" / "ema.safetensors")
    again = train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0)), workspace)
    assert again["run_id"] == s["clip"]["run_id"]
    after = load_file(workspace.checkpoints / "clip" / "clip-tiny" / "ema.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_new_data_trains_again_from_scratch(tmp_path):
    """A finished checkpoint trained on other pairs is out of date: the same spec trains
    again (a new MLflow run), where the same pairs make it a no-op."""
    from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard

    workspace = make_workspace(tmp_path, n=120)
    spec = ClipTrainSpec(train=tiny_train(ema_halflife_images=0))
    first = train_clip(spec, workspace)
    assert train_clip(spec, workspace)["skipped"]  # the same pairs: nothing to do
    more = ShapesSpec(n=60, seed=9, faults=FaultRates.uniform(0))
    write_as_raw_shard(more, workspace.raw / "00001.parquet", base_url="http://127.0.0.1:2")
    lines: list[str] = []
    again = train_clip(spec, workspace, log=lines.append)
    assert "skipped" not in again and again["run_id"] != first["run_id"]
    assert any("changed; training again from scratch" in line for line in lines)


def test_other_settings_on_an_existing_checkpoint_are_refused(trained):
    workspace, _ = trained
    with pytest.raises(ValueError, match="other settings"):
        train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0, lr=5e-3)), workspace)


def test_lit_trains_the_text_tower_against_the_locked_image_tower(trained):
    """A text encoder with `image_tower`: its image tower is the named CLIP's, bit for bit,
    frozen through training; the text tower trains and adopts the tower's embedding width;
    a new image tower counts as new inputs (training again), and a missing one is one error."""
    workspace, s = trained
    spec = ClipTrainSpec(
        preset="clip-small", image_tower="clip-tiny", train=tiny_train(ema_halflife_images=0)
    )
    summary = train_clip(spec, workspace)
    lit = load_file(workspace.checkpoints / "clip" / "clip-small" / "ema.safetensors")
    tower = load_file(workspace.checkpoints / "clip" / "clip-tiny" / "ema.safetensors")
    visual = [k for k in tower if k.startswith("visual.")]
    assert visual and all(torch.equal(lit[k], tower[k]) for k in visual)
    config = load_config(workspace.checkpoints / "clip" / "clip-small")
    assert config["image_tower"] == "clip-tiny"
    assert config["clip"]["embed_dim"] == 128 and config["clip"]["text_width"] == 192
    torch.manual_seed(spec.train.seed)  # the weights the training started from
    cfg = lit_config(CLIP_PRESETS["clip-small"], CLIP_PRESETS["clip-tiny"])
    start = build_clip(cfg).state_dict()
    assert not torch.equal(start["text_projection"], lit["text_projection"])  # text trained
    assert not torch.equal(start[visual[0]], lit[visual[0]])  # the tower was copied in
    assert train_clip(spec, workspace)["skipped"]  # the same inputs: nothing to do

    other = copy_tower_with_noise(workspace, "clip-tiny", "other-tower")
    lines: list[str] = []
    moved = train_clip(dataclasses.replace(spec, image_tower=other), workspace, log=lines.append)
    assert "skipped" not in moved and moved["run_id"] != summary["run_id"]
    assert any("changed; training again from scratch" in line for line in lines)

    with pytest.raises(ValueError, match=r"no clip checkpoint 'nope'"):
        train_clip(dataclasses.replace(spec, preset="clip-base", image_tower="nope"), workspace)
    assert not (workspace.checkpoints / "clip" / "clip-base").exists()


def copy_tower_with_noise(workspace, name: str, new: str) -> str:
    """A copy of CLIP checkpoint `name` as `new`, its weights nudged: another image tower."""
    from safetensors.torch import save_file

    src, dst = workspace.checkpoints / "clip" / name, workspace.checkpoints / "clip" / new
    shutil.copytree(src, dst)
    for weights in ("model", "ema"):
        tensors = load_file(dst / f"{weights}.safetensors")
        save_file({k: v + 1e-3 for k, v in tensors.items()}, dst / f"{weights}.safetensors")
    return new


def test_mlflow_run_contents(trained):
    import mlflow

    workspace, s = trained
    with Tracker(workspace, "marble-train", "probe"):  # sets the tracking URI
        pass
    run = mlflow.get_run(s["autoencoder"]["run_id"])
    assert run.data.params["train.steps"] == "6"
    assert run.data.params["model.preset"] == "kl-f4"
    assert "loss" in run.data.metrics and "val_psnr" in run.data.metrics
    assert run.data.tags["code_version"]
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "reconstructions.png" in artifacts
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    names = {m.name for m in mlflow.search_registered_models()}
    assert {"autoencoder-kl-f4", "clip-clip-tiny", "diffusion-clip-tiny_unet-xs_kl-f4"} <= names
    diffusion_artifacts = [
        a.path for a in mlflow.MlflowClient().list_artifacts(s["diffusion"]["run_id"])
    ]
    assert "samples.png" in diffusion_artifacts


def test_tracking_switch_turns_mlflow_off(tmp_path, monkeypatch):
    """MARBLE_TRACKING=off (GPU benchmarks without mlflow): nothing is tracked or written;
    a value other than on/off is refused by name."""
    workspace = Workspace(tmp_path / "home")
    monkeypatch.setenv("MARBLE_TRACKING", "off")
    with training_tracker(workspace, "autoencoder", "kl-f4")(None, True) as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss": 1.0}, step=1)
    assert tracker.run_id is None and not tracker.enabled
    assert not (tmp_path / "home").exists()
    monkeypatch.setenv("MARBLE_TRACKING", "maybe")
    with pytest.raises(ValueError, match="MARBLE_TRACKING must be 'on' or 'off'"):
        training_tracker(workspace, "autoencoder", "kl-f4")


def test_bad_train_config_is_refused_by_name():
    with pytest.raises(ValueError, match="betas must be two numbers in"):
        TrainConfig(betas=(0.9, 1.0))
    for name in ("weight_decay", "warmup_images", "ema_halflife_images"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got -1"):
            TrainConfig(**{name: -1})


def test_schedules_count_images_not_steps():
    """Warm-up and EMA horizons are the same number of images at any batch size: twice the
    batch, half the warm-up steps and the square of the per-step decay's complement share."""
    from tasks.train.recipe import EMA_RAMPUP, ema_decay_at, lr_factor

    small = TrainConfig(steps=400, batch_size=64, warmup_images=6400, ema_halflife_images=4400)
    large = TrainConfig(steps=200, batch_size=128, warmup_images=6400, ema_halflife_images=4400)
    assert (small.warmup_steps, large.warmup_steps) == (100, 50)
    assert TrainConfig(batch_size=100, warmup_images=6401).warmup_steps == 65  # rounded up
    for step in (0, 24, 49):  # the lr after the same images seen
        assert lr_factor(2 * step + 1, small) == pytest.approx(lr_factor(step, large))
    assert lr_factor(49, large) == 1.0 and lr_factor(199, large) == pytest.approx(0.1, abs=1e-4)
    # a half-life of 4,400 images: 0.5 ** (128 / 4400) a step at 128, its root at 64
    assert large.ema_decay == pytest.approx(0.5 ** (128 / 4400)) == pytest.approx(0.98004, 1e-5)
    assert small.ema_decay**2 == pytest.approx(large.ema_decay)
    assert TrainConfig(ema_halflife_images=0).ema_decay == 0.0
    # warming up: the half-life is EMA_RAMPUP of the images seen, so exp(-9 / (t + 1))
    for step in (0, 9, 99):
        assert ema_decay_at(step, large) == pytest.approx(math.exp(-9 / (step + 1)))
    assert 4400 / EMA_RAMPUP / 128 < 1000  # warmed up by step 1,000 at batch 128
    assert ema_decay_at(1000, large) == large.ema_decay
    assert ema_decay_at(2001, small) == small.ema_decay


def test_weight_decay_reaches_every_trainable_parameter(tmp_path):
    """One AdamW step with a zero gradient moves each trainable parameter by the closed form
    p * (1 - lr * weight_decay): Linear and Embedding weights, biases, LayerNorm gains and a
    0-D logit_scale alike (the recipe measured best, docs/training.md); a frozen tensor is
    left out of the optimizer."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "emb": torch.nn.Embedding(5, 3),
            "lin": torch.nn.Linear(3, 2),
            "norm": torch.nn.LayerNorm(3),
            "frozen": torch.nn.Linear(2, 2).requires_grad_(False),
        }
    )
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.tensor(2.0)))
    torch.nn.init.normal_(model.norm.bias)  # not zero, so its decay shows
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_fn(net, step, micro, g):  # a zero gradient: Adam's own update is 0
        return 0.0 * sum(p.sum() for p in net.parameters() if p.requires_grad), 1

    cfg = TrainConfig(
        steps=1, batch_size=1, lr=0.5, weight_decay=0.1, warmup_images=0, ema_halflife_images=0
    )
    train(model, loss_fn, cfg, CheckpointDir(tmp_path / "ckpt"), {}, null_tracker())
    for name, p in model.named_parameters():
        factor = 1.0 if name.startswith("frozen.") else 1 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


def test_every_step_trains_in_train_mode_after_a_validation_that_switches_it(tmp_path):
    """Without an EMA the validated model is the trained one; a validation that puts it in
    eval mode must not leave the steps after it there (dropout, norms' running stats)."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    modes = []

    def loss_fn(net, step, micro, g):
        modes.append(net.training)
        return net(torch.ones(4, 2)).square().mean(), 4

    def validate(ema, step):
        ema.eval()
        return {}

    cfg = TrainConfig(steps=4, batch_size=4, val_every=1, warmup_images=0, ema_halflife_images=0)
    train(model, loss_fn, cfg, CheckpointDir(tmp_path / "ckpt"), {}, null_tracker(),
          validate, log=lambda *_: None)  # fmt: skip
    assert modes == [True] * 4


def test_unknown_choices_in_a_spec_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown timestep_sampling 'beta'"):
        DiffusionTrainSpec(timestep_sampling="beta")
    with pytest.raises(ValueError, match="unknown unet 'unet-xxl'"):
        DiffusionTrainSpec(unet="unet-xxl")
    with pytest.raises(ValueError, match="unknown CLIP preset 'clip-huge'"):
        ClipTrainSpec(preset="clip-huge")
    with pytest.raises(ValueError, match="unknown autoencoder preset 'kl-f16'"):
        AutoencoderTrainSpec(preset="kl-f16")


def test_missing_encoder_checkpoint_is_one_clear_error(tmp_path):
    workspace = make_workspace(tmp_path)
    spec = DiffusionTrainSpec(autoencoder="identity", train=tiny_train())
    with pytest.raises(ValueError, match=r"no autoencoder checkpoint 'identity' .*found: none"):
        train_diffusion(spec, workspace)
    train_autoencoder(AutoencoderTrainSpec(preset="identity"), workspace)
    with pytest.raises(ValueError, match=r"no clip checkpoint 'clip-tiny' .*found: none.*train"):
        train_diffusion(spec, workspace)


# ---------------------------------------------------------------------------- loop behaviour


def test_ema_update_closed_form():
    """ema <- d * ema + (1 - d) * model: from 0 towards 1 with d = 0.9, 0.1 then 0.19."""
    from tasks.train.recipe import ema_updater

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for p in model.parameters():
        torch.nn.init.ones_(p)
    for p in ema.parameters():
        torch.nn.init.zeros_(p)
    model[1].running_mean.fill_(5.0)
    update_ema = ema_updater(ema, model)
    update_ema(0.9)
    for p in ema.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.1))
    update_ema(0.9)
    for p in ema.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.19))
    torch.testing.assert_close(ema[1].running_mean, torch.full((2,), 5.0))  # copied


def test_loss_falls_on_a_fixed_batch(tmp_path):
    """Overfit: the U-Net drives the diffusion loss on one fixed batch far below its start."""
    from models.diffusion import diffusion_loss, make_alphas_cumprod, q_sample
    from models.unet import UNET_PRESETS, UNet

    torch.manual_seed(0)
    unet = UNet(UNET_PRESETS["unet-s"])
    ac = make_alphas_cumprod("cosine")
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(8, 4, 8, 8, generator=g)
    context = torch.randn(8, 6, 128, generator=g)
    t = torch.randint(100, 900, (8,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    losses = []

    def loss_fn(net, step, micro, gen):
        loss = diffusion_loss(net(q_sample(z0, t, noise, ac), t, context), noise, t, ac, "epsilon")
        losses.append(loss.item())
        return loss, 8

    cfg = TrainConfig(
        steps=60, batch_size=8, lr=2e-3, warmup_images=40, ema_halflife_images=0, ckpt_every=1000
    )
    train(unet, loss_fn, cfg, CheckpointDir(tmp_path / "ckpt"), {}, null_tracker())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)

    def loss_fn(net, step, micro, g):
        out = net(torch.ones(1, 2)).sum()
        return (out * float("nan") if step == 3 else out**2), 1

    cfg = TrainConfig(steps=10, batch_size=1, ckpt_every=2, ema_halflife_images=0, warmup_images=1)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        train(model, loss_fn, cfg, CheckpointDir(tmp_path / "ckpt"), {}, null_tracker())
    assert load_state(tmp_path / "ckpt")["step"] == 2


# ---------------------------------------------------------------------------- resume, DDP

RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    import tasks
    from tasks.store.workspace import Workspace
    from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion
    from tasks.train.trainer import TrainConfig
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=32, batch_size=8, lr=1e-3, warmup_images=16, log_every=4, ckpt_every=2)
    train_diffusion(DiffusionTrainSpec(train=cfg), Workspace(Path(sys.argv[1])))
    """
)


def _prepare_home(trained, root: Path):
    workspace, _ = trained
    shutil.copytree(workspace.raw, root / "data" / "raw")
    for kind, name in (("clip", "clip-tiny"), ("autoencoder", "kl-f4")):
        shutil.copytree(workspace.checkpoints / kind / name, root / "checkpoints" / kind / name)
    return root


def test_sigkill_then_resume_is_bit_identical(trained, tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    # MLflow off: the weights are the question here (a resumed `marble run`, tracked, is
    # test_flows.py's main job); each process saves the store's creation and the logging
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MARBLE_TRACKING": "off"}
    straight = _prepare_home(trained, tmp_path / "straight")
    subprocess.run([sys.executable, script, straight], check=True, env=env, capture_output=True)

    killed = _prepare_home(trained, tmp_path / "killed")
    state = killed / "checkpoints" / "diffusion" / "clip-tiny_unet-xs_kl-f4" / "state.pt"
    proc = subprocess.Popen(
        [sys.executable, script, killed],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and load_state(state.parent)["step"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_state(state.parent)["step"] < 32
    subprocess.run([sys.executable, script, killed], check=True, env=env, capture_output=True)

    for name in ("model", "ema"):
        a = load_file(
            straight
            / "checkpoints"
            / "diffusion"
            / "clip-tiny_unet-xs_kl-f4"
            / f"{name}.safetensors"
        )
        b = load_file(state.parent / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ after resume"


def _torchrun_two_gloo_processes(script_text: str, out: Path) -> None:
    """Run a script under torchrun with 2 CPU processes on loopback; it writes into `out`."""
    script = out / "ddp_script.py"
    script.write_text(script_text)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
    }
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys, torch
    from pathlib import Path
    import tasks
    from models.autoencoder import AE_PRESETS, autoencoder_loss, build_autoencoder
    from tasks.runtime.devices import pick_device
    from tasks.train.trainer import TrainConfig, init_distributed, rank_slice, train
    from tasks.store.tracking import Tracker
    from tasks.store.checkpoint import CheckpointDir
    torch.manual_seed(0)
    model = build_autoencoder(AE_PRESETS["kl-f4"])
    data = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    info = init_distributed(pick_device("cpu"))
    def loss_fn(net, step, micro, g):
        idx = rank_slice(torch.randint(32, (8,), generator=g), info)
        recon, post = net(data[idx], generator=g)
        return autoencoder_loss(data[idx], recon, post)[0], len(idx)
    cfg = TrainConfig(steps=4, batch_size=8, warmup_images=8, ckpt_every=2, ema_halflife_images=50)
    out = Path(sys.argv[1])
    tracker = lambda run_id, enabled: Tracker(None, "x", "x", run_id, enabled=False)
    result = train(model, loss_fn, cfg, CheckpointDir(out / "ckpt"), {}, tracker)
    digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    (out / f"rank{info.rank}.txt").write_text(digest)
    """
)


CLIP_DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.distributed as dist
    import tasks
    from models.clip import CLIP_PRESETS, build_clip, clip_loss, make_tokenizer
    from tasks.runtime.devices import pick_device
    from tasks.train.trainer import init_distributed, rank_slice
    info = init_distributed(pick_device("cpu"))
    cfg = CLIP_PRESETS["clip-tiny"]
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    words = ["red", "green", "blue", "yellow", "purple", "orange", "gray", "black"]
    tokens = make_tokenizer(cfg)([f"a {w} circle" for w in words])

    def model_and_loss(rows, rank, world):
        torch.manual_seed(0)
        model = build_clip(cfg)
        image_f, text_f, scale = model(images[rows], tokens[rows])[:3]
        loss = clip_loss(image_f, text_f, scale, rank, world)
        loss.backward()
        return model, loss, (image_f.detach(), text_f.detach(), scale.detach())

    rows = rank_slice(torch.arange(8), info)  # this rank's share of the batch
    model, loss, (image_f, text_f, scale) = model_and_loss(rows, info.rank, info.world)
    grads = []
    for p in model.parameters():  # what DDP does: average the gradients over the ranks
        if p.grad is not None:
            dist.all_reduce(p.grad)
            grads.append(p.grad / info.world)
    whole, whole_loss, _ = model_and_loss(torch.arange(8), 0, 1)  # one process, whole batch
    whole_grads = [p.grad for p in whole.parameters() if p.grad is not None]
    out = {
        "loss": loss.item(),
        "whole": whole_loss.item(),
        "slice_only": clip_loss(image_f, text_f, scale).item(),  # no gathering
        "grad_error": max((a - b).abs().max().item() for a, b in zip(grads, whole_grads)),
        "grad_scale": max(b.abs().max().item() for b in whole_grads),
    }
    with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as f:
        json.dump(out, f)
    """
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """Both scripts above, one after the other in one torchrun launch of 2 gloo processes (a
    launch is ~10 s, most of it imports); the autoencoder's writes rank<r>.txt and ckpt/,
    the CLIP loss's rank<r>.json."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun_two_gloo_processes(DDP_SCRIPT + CLIP_DDP_SCRIPT, out)
    return out


def test_ddp_two_processes_end_with_identical_weights(ddp_run):
    assert (ddp_run / "rank0.txt").read_text() == (ddp_run / "rank1.txt").read_text()
    assert load_state(ddp_run / "ckpt")["step"] == 4


def test_clip_loss_under_ddp_is_the_whole_batch_loss(ddp_run):
    """2 gloo processes, each with half the batch, compute the loss and (averaged) gradients
    one process computes on the whole batch: every image sees every caption as a negative."""
    for rank in (0, 1):
        out = json.loads((ddp_run / f"rank{rank}.json").read_text())
        assert out["loss"] == pytest.approx(out["whole"], abs=1e-6)
        assert out["grad_error"] <= 1e-5 * out["grad_scale"]
        # the loss over a rank's own slice alone is a different objective (4 negatives, not 8)
        assert abs(out["slice_only"] - out["whole"]) > 1e-3
