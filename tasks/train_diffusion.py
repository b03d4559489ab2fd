"""Train a text-conditioned U-Net noise predictor on autoencoder latents.

The autoencoder and the CLIP text tower are frozen. The training set is encoded once,
latent posteriors (mean, std) and the hidden states of each distinct caption, and cached
under `$MARBLE_HOME/cache/`, keyed by both encoders' checkpoint digests; each step draws
latents from the cached posteriors. Captions are dropped (replaced by the empty caption's
states) with probability `cond_dropout`, which is what classifier-free guidance needs.

Checkpoint: checkpoints/diffusion/<text>_<unet>_<autoencoder>/ with model/ema safetensors
and a config.json that names (and digests) the encoders, so `load_pipeline` rebuilds the
whole text-to-image pipeline from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from models.clip import TextConditioner, make_tokenizer
from models.diffusion import (
    TIMESTEP_SAMPLINGS,
    TimestepSampling,
    diffusion_loss,
    make_alphas_cumprod,
    q_sample,
    sample_timesteps,
    training_target,
)
from models.pipeline import TextToImage
from models.unet import UNET_PRESETS, UNet, UNetConfig
from tasks import checkpoint as ckpt
from tasks.pairs import load_split_pairs, to_float
from tasks.plots import save_grid, to_uint8
from tasks.tracking import training_tracker
from tasks.train_autoencoder import load_autoencoder
from tasks.train_clip import load_clip
from tasks.trainer import TrainConfig, init_distributed, pick_device, rank_slice, train
from tasks.workspace import Workspace

KIND = "diffusion"


@dataclass(frozen=True)
class DiffusionTrainSpec:
    text_encoder: str = "clip-tiny"  # CLIP checkpoint under checkpoints/clip/
    # unet-xs at batch 128: the best all-correct rate after 3 CPU minutes (bench/time_to_quality.py)
    unet: str = "unet-xs"  # key of UNET_PRESETS
    autoencoder: str = "kl-f4"  # checkpoint under checkpoints/autoencoder/ ("identity": pixels)
    schedule: Literal["linear", "scaled_linear", "cosine"] = "cosine"
    num_train_timesteps: int = 1000
    # v-prediction with min-SNR-5 weighting learned far faster than plain ε on 8x8x4 latents
    # (measured here: recognisable objects after 800 steps instead of noise).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    min_snr_gamma: float | None = 5.0  # Hang et al. 2023 loss weighting; None = plain MSE
    # Training timesteps. Logit-normal (Esser et al. 2024) draws the middle of the schedule
    # more often; here (unet-xs, 880 steps, two seeds) it gave 82 % and 50.5 % all-correct
    # against uniform's 75.5 % and 78.5 %: the seed that lost drew wrong backgrounds, which
    # are settled at the rarely drawn high-noise end. The validation loss always uses uniform.
    timestep_sampling: TimestepSampling = "uniform"
    cond_dropout: float = 0.1  # caption replaced by "" with this probability
    guidance_scale: float = 4.0  # for the validation sample grid
    # lr 3e-3: 81.5 % all-correct at both seeds tried against 2e-3's 75.5 / 78.5 % (unet-xs,
    # 880 steps = 3 CPU minutes); 4e-3 was far worse on unet-s (27 %). AdamW beta2 0.99 and
    # EMA 0.98 (short memories for a short run): 82.5 / 74.5 % at 800 steps and seeds 0 / 1,
    # against 78 / 74.5 % with beta2 0.999 and EMA 0.99 (plain-loop probes; README).
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, batch_size=128, lr=3e-3, betas=(0.9, 0.99), ema_decay=0.98
        )
    )

    def __post_init__(self):
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(
                f"unknown timestep_sampling {self.timestep_sampling!r}; "
                f"choose from {TIMESTEP_SAMPLINGS}"
            )

    @property
    def name(self) -> str:
        return f"{self.text_encoder}_{self.unet}_{self.autoencoder}"


# ---------------------------------------------------------------------------- the cache


def encode_training_set(workspace: Workspace, spec: DiffusionTrainSpec, device) -> dict:
    """Latent posteriors and caption states of every train/val pair, cached on disk and keyed
    by both encoders' checkpoint digests and the pair_ids of each split."""
    ae_dir = workspace.checkpoints / "autoencoder" / spec.autoencoder
    clip_dir = workspace.checkpoints / "clip" / spec.text_encoder
    data = load_split_pairs(workspace.pairs, workspace.raw)
    pairs_key = hashlib.sha1(
        json.dumps({split: d[2] for split, d in data.items()}).encode()
    ).hexdigest()[:12]  # the pairs themselves: a new filter result means a new cache
    key = f"{ckpt.digest(ae_dir)}-{ckpt.digest(clip_dir)}-{pairs_key}"
    path = workspace.root / "cache" / f"encoded-{key}.safetensors"
    if path.exists():
        tensors = load_file(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return {**tensors, **meta}

    autoencoder = load_autoencoder(ae_dir, device)
    clip_model, clip_cfg = load_clip(clip_dir, device)
    text = TextConditioner(clip_model).to(device)
    tokenizer = make_tokenizer(clip_cfg)
    captions = list(dict.fromkeys(data["train"][1] + data["val"][1] + [""]))
    index = {c: k for k, c in enumerate(captions)}
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for split, (images, split_captions, _) in data.items():
            means, stds = [], []
            for i in range(0, len(images), 256):
                posterior = autoencoder.encode(to_float(images[i : i + 256]).to(device))
                # normalise the posterior: z' = (z - m) / s, so mean' = (mean - m)/s, std' = std/s
                means.append(autoencoder.normalize(posterior.mean).cpu())
                std = torch.exp(0.5 * posterior.logvar) * (not posterior.deterministic)
                stds.append((std / autoencoder.latent_std).cpu())
            tensors[f"{split}_mean"] = torch.cat(means).contiguous()
            tensors[f"{split}_std"] = torch.cat(stds).contiguous()
            tensors[f"{split}_caption"] = torch.tensor([index[c] for c in split_captions])
        contexts, masks = [], []
        for i in range(0, len(captions), 512):
            context, mask = text(tokenizer(captions[i : i + 512]).to(device))
            contexts.append(context.cpu())
            masks.append(mask.cpu())
    tensors["context"] = torch.cat(contexts).contiguous()  # (U, L, D)
    tensors["mask"] = torch.cat(masks).contiguous()  # (U, L)
    meta = {"captions": captions, "null_index": index[""]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp)
    path.with_suffix(".json").write_text(json.dumps(meta))
    os.replace(tmp, path)  # the tensors appear last: a present .safetensors means complete
    return {**tensors, **meta}


# ---------------------------------------------------------------------------- loading


def build_unet_config(
    spec: DiffusionTrainSpec, latent_channels: int, context_dim: int
) -> UNetConfig:
    if spec.unet not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {spec.unet!r}; choose from {list(UNET_PRESETS)}")
    return dataclasses.replace(
        UNET_PRESETS[spec.unet],
        in_channels=latent_channels,
        out_channels=latent_channels,
        context_dim=context_dim,
    )


def load_pipeline(workspace: Workspace, ckpt_dir: Path, device="cpu") -> TextToImage:
    """The text-to-image pipeline of a diffusion checkpoint (EMA weights), ready to sample."""
    config = ckpt.load_config(ckpt_dir)
    unet = ckpt.load_weights(
        ckpt_dir, UNet(ckpt.dataclass_from_json(UNetConfig, config["unet"])), "ema"
    )
    autoencoder = load_autoencoder(
        workspace.checkpoints / "autoencoder" / config["autoencoder"], device
    )
    clip_model, clip_cfg = load_clip(
        workspace.checkpoints / "clip" / config["text_encoder"], device
    )
    return TextToImage(
        unet=unet.to(device).eval().requires_grad_(False),
        autoencoder=autoencoder,
        text=TextConditioner(clip_model).to(device),
        tokenizer=make_tokenizer(clip_cfg),
        alphas_cumprod=make_alphas_cumprod(config["schedule"], config["num_train_timesteps"]),
        prediction_type=config["prediction_type"],
        latent_shape=tuple(config["latent_shape"]),
    )


# ---------------------------------------------------------------------------- training


def train_diffusion(
    spec: DiffusionTrainSpec, workspace: Workspace, log=print, validate_fn=None
) -> dict:
    """Train one (text encoder, U-Net, autoencoder) combination; returns a summary.

    validate_fn(pipeline, step) -> metrics, optional extra validation (e.g. attribute
    accuracy of guided samples on the built-in data).
    """
    device = pick_device(spec.train.device)
    info = init_distributed(device)
    cache = encode_training_set(workspace, spec, device)
    train_mean, train_std = cache["train_mean"], cache["train_std"]
    context, mask, null = cache["context"], cache["mask"], cache["null_index"]
    latent_shape = tuple(train_mean.shape[1:])
    unet_cfg = build_unet_config(spec, latent_shape[0], context.shape[-1])
    ac = make_alphas_cumprod(spec.schedule, spec.num_train_timesteps)
    ac_device = ac.to(device)
    ckpt_dir = workspace.checkpoints / KIND / spec.name
    ae_dir = workspace.checkpoints / "autoencoder" / spec.autoencoder
    clip_dir = workspace.checkpoints / "clip" / spec.text_encoder
    config = {
        "kind": KIND,
        "unet_preset": spec.unet,
        "unet": asdict(unet_cfg),
        "text_encoder": spec.text_encoder,
        "text_encoder_digest": ckpt.digest(clip_dir),
        "autoencoder": spec.autoencoder,
        "autoencoder_digest": ckpt.digest(ae_dir),
        "schedule": spec.schedule,
        "num_train_timesteps": spec.num_train_timesteps,
        "prediction_type": spec.prediction_type,
        "min_snr_gamma": spec.min_snr_gamma,
        "timestep_sampling": spec.timestep_sampling,
        "cond_dropout": spec.cond_dropout,
        "latent_shape": list(latent_shape),
    }

    torch.manual_seed(spec.train.seed)
    model = UNet(unet_cfg)

    def loss_fn(net, step, micro, g):
        per_micro = spec.train.batch_size // spec.train.grad_accum
        idx = rank_slice(torch.randint(len(train_mean), (per_micro,), generator=g), info)
        b = len(idx)
        z0 = train_mean[idx] + train_std[idx] * torch.randn(train_mean[idx].shape, generator=g)
        caption = cache["train_caption"][idx]
        drop = torch.rand(b, generator=g) < spec.cond_dropout
        caption = torch.where(drop, torch.full_like(caption, null), caption)
        t = sample_timesteps(b, spec.num_train_timesteps, g, spec.timestep_sampling)
        noise = torch.randn(z0.shape, generator=g)
        z0, t, noise = z0.to(device), t.to(device), noise.to(device)
        x_t = q_sample(z0, t, noise, ac_device)
        out = net(x_t, t, context[caption].to(device), mask[caption].to(device))
        target = training_target(spec.prediction_type, z0, noise, t, ac_device)
        loss = diffusion_loss(
            out.float(), target, t, ac_device, spec.prediction_type, spec.min_snr_gamma
        )
        return loss, b

    val_generator_seed = 1234

    def validate(ema, step):
        g = torch.Generator().manual_seed(val_generator_seed)
        n = min(512, len(cache["val_mean"]))
        z0 = cache["val_mean"][:n] + cache["val_std"][:n] * torch.randn(
            cache["val_mean"][:n].shape, generator=g
        )
        caption = cache["val_caption"][:n]
        t = torch.randint(spec.num_train_timesteps, (n,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        with torch.no_grad():
            z0, t, noise = z0.to(device), t.to(device), noise.to(device)
            out = ema(
                q_sample(z0, t, noise, ac_device),
                t,
                context[caption].to(device),
                mask[caption].to(device),
            )
            target = training_target(spec.prediction_type, z0, noise, t, ac_device)
            metrics = {
                "val_loss": diffusion_loss(
                    out.float(), target, t, ac_device, spec.prediction_type
                ).item()
            }
        if validate_fn is not None:
            metrics |= validate_fn(_pipeline_from(ema), step)
        return metrics

    frozen: dict = {}  # the autoencoder and text tower, read from disk once, on first use

    def _pipeline_from(ema) -> TextToImage:
        if not frozen:
            clip_model, clip_cfg = load_clip(clip_dir, device)
            frozen["autoencoder"] = load_autoencoder(ae_dir, device)
            frozen["text"] = TextConditioner(clip_model).to(device)
            frozen["tokenizer"] = make_tokenizer(clip_cfg)
        return TextToImage(
            unet=ema.eval(),
            alphas_cumprod=ac,
            prediction_type=spec.prediction_type,
            latent_shape=latent_shape,
            **frozen,
        )

    tracker = training_tracker(workspace, KIND, spec.name)
    result = train(
        model, loss_fn, spec.train, ckpt_dir, config, tracker, validate, log=log, desc=spec.name
    )
    if result.trained_now and info.is_main:
        pipe = _pipeline_from(result.ema)
        val_captions = [cache["captions"][k] for k in cache["val_caption"].tolist()]
        prompts = list(dict.fromkeys(val_captions))[:16]
        images = pipe.generate(prompts, list(range(len(prompts))), spec.guidance_scale)
        with tracker(result.run_id) as t:
            with tempfile.TemporaryDirectory() as tmp:
                t.log_artifact(save_grid(to_uint8(images), Path(tmp) / "samples.png", ncol=8))
                (Path(tmp) / "prompts.txt").write_text("\n".join(prompts))
                t.log_artifact(Path(tmp) / "prompts.txt")
            t.log_model(f"{KIND}-{spec.name}", ckpt_dir, config)
    return result.summary(KIND, spec.name, ckpt_dir)
