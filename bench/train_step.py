"""Benchmark: img/s of one diffusion training step (forward, backward, AdamW) for each U-Net
preset, and for diffusers' UNet2DConditionModel built to the same shape, in one run.

    .venv/bin/python bench/train_step.py [--batch 64] [--latent 8] [--steps 20] [--device auto]

Needs only torch (and diffusers, optional: `pip install diffusers`), so it runs on a GPU
machine without the rest of the stack. bf16 autocast on CUDA, fp32 on CPU; fused AdamW
for both, as marble's trainer uses. Prints a table and one JSON line. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.diffusion import diffusion_loss, make_alphas_cumprod, q_sample  # noqa: E402
from models.unet import UNET_PRESETS, UNet, UNetConfig  # noqa: E402


def diffusers_twin(cfg: UNetConfig, latent: int):
    """diffusers' UNet2DConditionModel with our block layout: same widths, res blocks per
    level, attention levels, heads, context width and GroupNorm groups."""
    from diffusers import UNet2DConditionModel

    levels = range(len(cfg.channel_mult))
    attn = [lvl in cfg.attn_levels for lvl in levels]
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=cfg.widths,
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=tuple(w // cfg.head_dim for w in cfg.widths),  # heads, diffusers' naming
        norm_num_groups=cfg.norm_groups,
        transformer_layers_per_block=cfg.transformer_depth,
    )


def time_steps(model, forward, batch, latent, channels, context, steps, device) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer
    ac = make_alphas_cumprod("cosine").to(device)
    g = torch.Generator(device=device).manual_seed(0)
    z0 = torch.randn(batch, channels, latent, latent, device=device, generator=g)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        t = torch.randint(0, 1000, (batch,), device=device, generator=g)
        noise = torch.randn(z0.shape, device=device, generator=g)
        with autocast:
            out = forward(q_sample(z0, t, noise, ac), t, context)
        loss = diffusion_loss(out.float(), noise, t, ac, "epsilon")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up; under CUDA graphs also the recording runs
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latent", type=int, default=8, help="latent side (8: 32 px with f = 4)")
    parser.add_argument("--context-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--presets", default=",".join(UNET_PRESETS))
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="torch.compile both U-Nets with this mode (warm-up steps absorb the compile)",
    )
    args = parser.parse_args()

    def prepared(module):
        return module if args.compile == "none" else torch.compile(module, mode=args.compile)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except ImportError:
        have_diffusers = False

    rows = []
    for name in args.presets.split(","):
        cfg = UNET_PRESETS[name]
        context = torch.randn(args.batch, args.context_len, cfg.context_dim, device=device)
        torch.manual_seed(0)
        ours = UNet(cfg).to(device)
        row = {"preset": name, "params": sum(p.numel() for p in ours.parameters())}
        row["marble_img_s"] = time_steps(
            ours, prepared(ours), args.batch, args.latent, cfg.in_channels,
            context, args.steps, device,
        )  # fmt: skip
        del ours
        if have_diffusers:
            twin = diffusers_twin(cfg, args.latent).to(device)
            row["diffusers_params"] = sum(p.numel() for p in twin.parameters())
            fast_twin = prepared(twin)
            row["diffusers_img_s"] = time_steps(
                twin, lambda x, t, c, f=fast_twin: f(x, t, c).sample, args.batch, args.latent,
                cfg.in_channels, context, args.steps, device,
            )  # fmt: skip
            row["ratio"] = row["marble_img_s"] / row["diffusers_img_s"]
            del twin, fast_twin
        rows.append(row)
        print(json.dumps(row), flush=True)

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\ntraining step, batch {args.batch}, {args.latent}x{args.latent} latents, "
        f"compile {args.compile}, torch {torch.__version__}, {where}"
    )
    for r in rows:
        line = (
            f"  {r['preset']:<8} {r['params'] / 1e6:5.1f}M  marble {r['marble_img_s']:8.0f} img/s"
        )
        if "ratio" in r:
            line += f"   diffusers ({r['diffusers_params'] / 1e6:.1f}M) {r['diffusers_img_s']:8.0f} img/s   ratio {r['ratio']:.2f}"
        print(line)
    summary = {"device": where, "batch": args.batch, "latent": args.latent, "compile": args.compile}
    print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
