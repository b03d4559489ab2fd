"""Train a text-conditioned U-Net noise predictor on autoencoder latents.

The autoencoder and the CLIP text tower are frozen. The training set is encoded once,
latent posteriors (mean, std) and the hidden states of each distinct caption, and cached
under `$MARBLE_HOME/cache/`, keyed by both encoders' checkpoint digests; each step draws
latents from the cached posteriors. Captions are dropped (replaced by the empty caption's
states) with probability `cond_dropout`, which is what classifier-free guidance needs.

Checkpoint: checkpoints/diffusion/<text>_<unet>_<autoencoder>/ with model/ema safetensors
and a config.json that names (and digests) the encoders, so `tasks.store.loaders.load_pipeline`
rebuilds the whole text-to-image pipeline from it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.diffusion import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SAMPLINGS,
    PredictionType,
    Schedule,
    TimestepSampling,
    diffusion_loss,
    make_alphas_cumprod,
    q_sample,
    sample_timesteps,
    training_target,
)
from models.pipeline import TextToImage
from models.unet import UNET_PRESETS, UNet, UNetConfig
from tasks.runtime.devices import pick_device
from tasks.store.checkpoint import CheckpointDir, digest
from tasks.store.files import atomic_file, atomic_write_text
from tasks.store.images import save_grid, to_float, to_uint8
from tasks.store.loaders import load_conditioning, text_to_image
from tasks.store.pairs import PairsError, load_split_pairs, pairs_digest
from tasks.store.tracking import training_tracker
from tasks.store.workspace import DATA_VARIANTS, DEFAULT_VARIANT, Workspace
from tasks.train.trainer import (
    TrainConfig,
    init_distributed,
    one_writer,
    rank_slice,
    train,
)

KIND = "diffusion"


@dataclass(frozen=True)
class DiffusionTrainSpec:
    """One model of the grid. The defaults are the settings that reached the best
    all-attributes-correct rate in 3 CPU minutes on the built-in data (docs/training.md)."""

    text_encoder: str = "clip-tiny"  # CLIP checkpoint under checkpoints/clip/
    unet: str = "unet-xs"  # key of UNET_PRESETS
    autoencoder: str = "kl-f4"  # checkpoint under checkpoints/autoencoder/ ("identity": pixels)
    schedule: Schedule = "cosine"
    num_train_timesteps: int = 1000
    prediction_type: PredictionType = "v_prediction"
    min_snr_gamma: float | None = 5.0  # Hang et al. 2023 loss weighting; None = plain MSE
    # training timesteps (the validation loss always draws them uniformly)
    timestep_sampling: TimestepSampling = "uniform"
    cond_dropout: float = 0.1  # caption replaced by "" with this probability
    guidance_scale: float = 4.0  # for the validation sample grid
    replicate: int = 0  # a training replicate of the grid point; its text encoder's too
    data_variant: str = DEFAULT_VARIANT  # the training set (workspace.DATA_VARIANTS)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000,
            batch_size=128,
            lr=3e-3,
            betas=(0.9, 0.99),
            warmup_images=6400,
            ema_halflife_images=4400,  # a decay of 0.98 a step at batch 128
        )
    )

    def __post_init__(self):
        choices = {
            "unet": (self.unet, tuple(UNET_PRESETS)),
            "schedule": (self.schedule, tuple(BETA_SCHEDULES)),
            "prediction_type": (self.prediction_type, PREDICTION_TYPES),
            "timestep_sampling": (self.timestep_sampling, TIMESTEP_SAMPLINGS),
        }
        choices["data_variant"] = (self.data_variant, tuple(DATA_VARIANTS))
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {list(allowed)}")

    @property
    def name(self) -> str:
        """The text encoder's name carries the replicate (it is trained per replicate); a
        data variant other than the kept pairs is a suffix."""
        variant = "" if self.data_variant == DEFAULT_VARIANT else f"_{self.data_variant}"
        return f"{self.text_encoder}_{self.unet}_{self.autoencoder}{variant}"


# ---------------------------------------------------------------------------- the cache


def encode_training_set(workspace: Workspace, spec: DiffusionTrainSpec, device) -> dict:
    """Latent posteriors and caption states of every train/val pair of the spec's data
    variant, cached on disk and keyed by both encoders' checkpoint digests and the pair_ids
    of each split."""
    pairs = workspace.training_pairs(spec.data_variant)
    if spec.data_variant != DEFAULT_VARIANT and not any(pairs.glob("*.parquet")):
        raise PairsError(
            f"no training set for data variant {spec.data_variant!r} in {pairs}; `marble run "
            f"--data-variants {spec.data_variant}` or `marble train diffusion --data-variant "
            f"{spec.data_variant}` writes it"
        )
    encoders = f"{digest(workspace.checkpoint('autoencoder', spec.autoencoder))}-" + digest(
        workspace.checkpoint("clip", spec.text_encoder)
    )  # a missing encoder stops here, before any data is read
    data = load_split_pairs(pairs, workspace.raw)
    key = f"{encoders}-{pairs_digest(data)}"  # a new filter result means a new cache
    path = workspace.cache / f"encoded-{key}.safetensors"
    if path.exists():
        tensors = load_file(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return {**tensors, **meta}

    parts = load_conditioning(workspace, spec.text_encoder, spec.autoencoder, device)
    autoencoder, text, tokenizer = parts.autoencoder, parts.text, parts.tokenizer
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
    # (U, L', D) and (U, L'), L' the longest caption with its EOT: every caption masks the
    # positions after it, so the U-Net's cross-attention need not run over them
    context, mask = torch.cat(contexts), torch.cat(masks)
    length = int(mask.sum(dim=1).max())
    tensors["context"] = context[:, :length].contiguous()
    tensors["mask"] = mask[:, :length].contiguous()
    meta = {"captions": captions, "null_index": index[""], "pairs": pairs_digest(data)}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    with atomic_file(path) as tmp:  # the tensors appear last: present means complete
        save_file(tensors, tmp)
    return {**tensors, **meta}


def build_unet_config(
    spec: DiffusionTrainSpec, latent_channels: int, context_dim: int
) -> UNetConfig:
    return dataclasses.replace(
        UNET_PRESETS[spec.unet],
        in_channels=latent_channels,
        out_channels=latent_channels,
        context_dim=context_dim,
    )


# ---------------------------------------------------------------------------- training


@one_writer(KIND)
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
    checkpoint = CheckpointDir(workspace.checkpoint(KIND, spec.name))
    config = {
        "kind": KIND,
        "unet_preset": spec.unet,
        "unet": asdict(unet_cfg),
        "text_encoder": spec.text_encoder,
        "text_encoder_digest": digest(workspace.checkpoint("clip", spec.text_encoder)),
        "autoencoder": spec.autoencoder,
        "autoencoder_digest": digest(workspace.checkpoint("autoencoder", spec.autoencoder)),
        "schedule": spec.schedule,
        "num_train_timesteps": spec.num_train_timesteps,
        "prediction_type": spec.prediction_type,
        "min_snr_gamma": spec.min_snr_gamma,
        "timestep_sampling": spec.timestep_sampling,
        "cond_dropout": spec.cond_dropout,
        "latent_shape": list(latent_shape),
        "data_variant": spec.data_variant,
        "training_set_digest": cache["pairs"],
    }
    if spec.replicate:  # replicate 0 keeps the config (and so the checkpoint) it always had
        config["replicate"] = spec.replicate

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

    parts: list = []  # the frozen autoencoder and text tower, read from disk on first use

    def _pipeline_from(ema) -> TextToImage:
        if not parts:
            parts.append(load_conditioning(workspace, spec.text_encoder, spec.autoencoder, device))
        return text_to_image(config, ema, parts[0])

    tracker = training_tracker(workspace, KIND, spec.name)
    inputs = ("text_encoder_digest", "autoencoder_digest", "training_set_digest")
    result = train(
        model, loss_fn, spec.train, checkpoint, config, tracker, validate, log=log,
        desc=spec.name, inputs={k: config[k] for k in inputs},
    )  # fmt: skip
    if result.trained_now and info.is_main:
        pipe = _pipeline_from(result.ema)
        val_captions = [cache["captions"][k] for k in cache["val_caption"].tolist()]
        prompts = list(dict.fromkeys(val_captions))[:16]
        images = pipe.generate(prompts, list(range(len(prompts))), spec.guidance_scale)
        with tracker(result.run_id) as t:
            t.set_tags({k: config[k] for k in ("data_variant", "training_set_digest")})
            with tempfile.TemporaryDirectory() as tmp:
                t.log_artifact(save_grid(to_uint8(images), Path(tmp) / "samples.png", ncol=8))
                (Path(tmp) / "prompts.txt").write_text("\n".join(prompts))
                t.log_artifact(Path(tmp) / "prompts.txt")
            t.log_model(f"{KIND}-{spec.name}", checkpoint.path, config)
    return result.summary(KIND, spec.name, checkpoint.path)
