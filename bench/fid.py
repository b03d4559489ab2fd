"""Benchmark: FID feature extraction, marble's path (clean resize, pytorch-fid's Inception,
streaming float64 statistics, marble's Fréchet distance) against torchmetrics'
`FrechetInceptionDistance.update` / `compute` given the same network and the same resized
images; then the projected wall time of an FID-10K sweep point and of the nightly grid.

    .venv/bin/python bench/fid.py [--n 400] [--batch 50] [--device auto]
                                  [--sampling-img-s 45] [--grid 4x13]

Images: built-in shapes renders (real) and the same scenes with noise added (generated).
Both FIDs must agree; the script prints both, the img/s of each and their ratio, and the
seconds of one 2,048-dim distance: marble's (eval/frechet.py) and pytorch-fid's
`calculate_frechet_distance` (its `sqrtm`). The projection uses the measured extraction
rate, marble's distance, and a
sampling rate (`--sampling-img-s`, from bench/sampling.py). Needs the installed FID weights
(make install), or `--random-weights` where they are not (a GPU machine: the speeds and the
agreement do not depend on the weights), and torchmetrics. Run it on an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tasks  # noqa: E402,F401
from eval.frechet import GaussianStats, frechet_distance  # noqa: E402
from eval.inception import build_fid_inception, clean_resize, inception_features  # noqa: E402
from tasks.evaluate.fid_weights import load_fid_state_dict  # noqa: E402
from tasks.shapes.render import render_scene, sample_scene  # noqa: E402


class _FromPixels(torch.nn.Module):
    """The same network taking torchmetrics' input: clean-resized floats in [0, 255]."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return self.network(x.float() / 127.5 - 1.0)


def random_inception(calibration: np.ndarray, device: torch.device) -> torch.nn.Module:
    """The FID network as torchvision initialises it (seeded), its batch-norm statistics
    taken from `calibration`: with the initial ones (mean 0, variance 1) its features die
    out, and every FID is 0."""
    torch.manual_seed(0)
    with mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        network = build_fid_inception({})
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the calibration batch
    inception_features(network.to(device).train(), calibration, device, len(calibration))
    return network.eval()


def images(n: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.stack([render_scene(sample_scene(seed, i, 0.25)[0], 32, seed, i) for i in range(n)])
    noisy = out.astype(np.float64) + rng.normal(scale=noise, size=out.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sampling-img-s", type=float, default=45.0)
    parser.add_argument("--grid", default="4x13", help="models x guidance scales of the nightly")
    parser.add_argument(
        "--random-weights", action="store_true",
        help="the network with seeded random weights, for a machine without the FID weights: "
        "the speeds and the agreement hold, the values are not FIDs",
    )  # fmt: skip
    args = parser.parse_args()
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    real, fake = images(args.n, 7, 0.0), images(args.n, 7, 40.0)
    if args.random_weights:
        network = random_inception(np.concatenate([real[:16], fake[:16]]), device)
    else:
        network = build_fid_inception(load_fid_state_dict()[0]).to(device)
    inception_features(network, real[:2], device)  # warm-up

    t0 = time.perf_counter()
    stats = [
        GaussianStats.of(inception_features(network, x, device, args.batch)) for x in (real, fake)
    ]
    marble_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = frechet_distance(stats[0].mean, stats[0].covariance, stats[1].mean, stats[1].covariance)
    fd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        pytorch_fid = float(calculate_frechet_distance(
            stats[0].mean, stats[0].covariance, stats[1].mean, stats[1].covariance
        ))  # fmt: skip
    sqrtm_s = time.perf_counter() - t0

    metric = FrechetInceptionDistance(feature=_FromPixels(network), normalize=False).to(device)
    t0 = time.perf_counter()
    for x, is_real in ((real, True), (fake, False)):
        for start in range(0, len(x), args.batch):
            batch = torch.from_numpy(clean_resize(x[start : start + args.batch])).to(device)
            metric.update(batch, real=is_real)
    theirs_extract = time.perf_counter() - t0
    theirs = float(metric.compute())

    marble_rate = 2 * args.n / marble_extract
    theirs_rate = 2 * args.n / theirs_extract
    models, guidance = (int(v) for v in args.grid.split("x"))
    point_s = 10_000 / args.sampling_img_s + 10_000 / marble_rate + fd_s
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\nFID feature extraction, {args.n} + {args.n} images of 32 px, batch {args.batch}, {where}"
    )
    print(f"  marble       {marble_rate:8.1f} img/s   FID {ours:.6f}")
    print(f"  torchmetrics {theirs_rate:8.1f} img/s   FID {theirs:.6f}")
    print(f"  ratio {marble_rate / theirs_rate:.2f}; |FID difference| {abs(ours - theirs):.2e}")
    print(
        f"  one distance: marble {fd_s:.2f} s, pytorch-fid (sqrtm) {sqrtm_s:.1f} s; "
        f"pytorch-fid's FID {pytorch_fid:.6f}"
    )
    print(
        f"  projected FID-10K point: {point_s / 60:.1f} min ({args.sampling_img_s:g} img/s sampling); nightly {args.grid} grid: {models * guidance * point_s / 3600:.1f} h"
    )
    print(json.dumps({
        "device": where, "marble_img_s": marble_rate, "torchmetrics_img_s": theirs_rate,
        "fid_marble": ours, "fid_torchmetrics": theirs, "fid_pytorch_fid": pytorch_fid,
        "fd_s": fd_s, "sqrtm_s": sqrtm_s,
        "projected_point_s": point_s, "projected_grid_s": models * guidance * point_s,
        "random_weights": args.random_weights,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
