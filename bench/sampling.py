"""Benchmark: guided sampling img/s, marble's DDIM sampler against diffusers' DDIMScheduler
driving the same U-Net with the same weights, schedule, guidance and initial noise.

    .venv/bin/python bench/sampling.py [--unet unet-xs] [--batch 100] [--steps 25,50]
                                       [--guidance 4] [--device auto] [--repeats 3]

Both loops run marble's U-Net (random weights: the cost of a step does not depend on them)
with classifier-free guidance as one batched forward of conditional and unconditional
inputs; the diffusers loop is the one its pipelines run (`scheduler.step` on the guided
v-prediction). The script first checks that both produce the same latents, then times each
`--repeats` times, interleaved, and keeps the fastest. Needs torch and diffusers only (`pip install
diffusers`), so it runs on a GPU machine without the rest of the stack. Prints a table and
one JSON line; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.diffusion import BETA_SCHEDULES, make_alphas_cumprod  # noqa: E402
from models.guidance import guided_model_fn  # noqa: E402
from models.sampling import make_timesteps, randn_per_image, sample_ddim  # noqa: E402
from models.unet import UNET_PRESETS, UNet  # noqa: E402

PREDICTION = "v_prediction"  # marble's training default


def marble_sample(unet, x_T, context, null, guidance, steps, ac):
    model_fn = guided_model_fn(unet, context, None, null, None, guidance)
    timesteps = make_timesteps(len(ac), steps, "trailing").to(x_T.device)
    return sample_ddim(model_fn, x_T, timesteps, ac.to(x_T.device), prediction_type=PREDICTION)


def diffusers_sample(unet, x_T, context, null, guidance, steps, betas):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=len(betas),
        trained_betas=betas.numpy(),
        prediction_type=PREDICTION,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    scheduler.set_timesteps(steps, device=x_T.device)
    both = torch.cat([null.expand_as(context), context])
    latents = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(torch.cat([latents, latents]), t.expand(2 * len(latents)), both)
            out_u, out_c = out.chunk(2)
            latents = scheduler.step(out_u + guidance * (out_c - out_u), t, latents).prev_sample
    return latents


def _seconds(fn, fn_args: tuple, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*fn_args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_times(first, second, repeats: int, device) -> tuple[float, float]:
    """Fastest of `repeats` runs of each of two (fn, args), interleaved and taking turns at
    going first, so drift in the machine's speed does not favour either."""
    times: tuple[list[float], list[float]] = ([], [])
    for k in range(repeats):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        for i in order:
            fn, fn_args = (first, second)[i]
            times[i].append(_seconds(fn, fn_args, device))
    return min(times[0]), min(times[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unet", default="unet-xs", choices=list(UNET_PRESETS))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--steps", default="25,50")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    cfg = UNET_PRESETS[args.unet]
    unet = UNet(dataclasses.replace(cfg, context_dim=128)).to(device).eval()
    for p in unet.parameters():  # an untrained U-Net outputs zeros: give it work to show
        torch.nn.init.normal_(p, std=0.02)
    betas = BETA_SCHEDULES["cosine"](1000)
    ac = make_alphas_cumprod("cosine")
    g = torch.Generator().manual_seed(1)
    context = torch.randn(args.batch, 16, 128, generator=g).to(device)
    null = torch.randn(1, 16, 128, generator=g).to(device)
    x_T = randn_per_image((cfg.in_channels, args.latent, args.latent), range(args.batch)).to(device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        marble_args = (unet, x_T, context, null, args.guidance, steps, ac)
        diffusers_args = (unet, x_T, context, null, args.guidance, steps, betas)
        with torch.inference_mode():
            agree = (marble_sample(*marble_args) - diffusers_sample(*diffusers_args)).abs().max()
            ours, theirs = best_times(
                (marble_sample, marble_args), (diffusers_sample, diffusers_args), args.repeats,
                device,
            )  # fmt: skip
        rows.append({
            "steps": steps, "marble_img_s": args.batch / ours, "diffusers_img_s": args.batch / theirs,
            "ratio": theirs / ours, "max_latent_difference": agree.item(),
        })  # fmt: skip
    print(
        f"\nguided DDIM sampling, {args.unet}, batch {args.batch}, {args.latent}x{args.latent} latents, guidance {args.guidance}, {where}"
    )
    print(
        f"{'steps':>6} {'marble img/s':>13} {'diffusers img/s':>16} {'ratio':>6} {'max |diff|':>11}"
    )
    for r in rows:
        print(
            f"{r['steps']:>6} {r['marble_img_s']:>13.1f} {r['diffusers_img_s']:>16.1f} {r['ratio']:>6.2f} {r['max_latent_difference']:>11.2e}"
        )
    print(json.dumps({"device": where, "unet": args.unet, "batch": args.batch, "rows": rows}))


if __name__ == "__main__":
    main()
