"""The sweep's Pareto plot: CLIP score against FID and fd_clip, one curve per grid point,
guidance along it (Imagen Fig. 4), with the floor as a band.

Readable with many points: colour says the text encoder, line style the U-Net, marker the
autoencoder, a hollow marker a training set other than the kept pairs (the data variant is
named in the legend when the sweep has several); each point is the mean over its replicates with a vertical bar for its
interval (over replicates when there are several, sampling otherwise); each replicate is a
faint dot; guidance is written at each curve's ends only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.verdict import replicate_estimate
from tasks.evaluate.report import AXES, DISTANCES, axis_value, by_grid_point, is_point
from tasks.store.workspace import DEFAULT_VARIANT

_LINES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def _mean(by_replicate: dict[int, dict]) -> tuple[float, float, float, np.ndarray]:
    seeds = sorted(by_replicate)
    values = np.array([by_replicate[s]["value"] for s in seeds], dtype=np.float64)
    boot = np.array([by_replicate[s]["replicates"] for s in seeds], dtype=np.float64)
    est = replicate_estimate(values, boot)
    return est.mean, est.ci_low, est.ci_high, values


def pareto_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = by_grid_point(rows)
    meta = {r.get("grid_point") or r["model"]: r for r in rows if is_point(r)}
    colours = {v: plt.cm.tab10(i) for i, v in enumerate(AXES["text_encoder"])}
    floors = {r["metric"]: r for r in rows if r.get("model") == "floor"}
    variants = {axis_value(m, "data_variant") for m in meta.values()}
    fig, axes = plt.subplots(1, len(DISTANCES), figsize=(6.5 * len(DISTANCES), 5))
    for ax, metric in zip(axes, DISTANCES, strict=True):
        if metric in floors:
            f = floors[metric]
            ax.axhspan(f["ci_low"], f["ci_high"], color="0.85", zorder=0)
            ax.axhline(f["value"], color="0.5", lw=1, zorder=0,
                       label=f"floor: real vs real, N = {f['n']}")  # fmt: skip
        for name, by_guidance in sorted(points.items()):
            m = meta[name]
            variant = axis_value(m, "data_variant")
            style = {
                "color": colours.get(m["text_encoder"], "k"),
                "ls": _LINES[_index(AXES["unet"], m["unet"]) % len(_LINES)],
                "marker": _MARKERS[_index(AXES["autoencoder"], m["autoencoder"]) % len(_MARKERS)],
            }
            if variant != DEFAULT_VARIANT:
                style["mfc"] = "none"
            gs = sorted(g for g in by_guidance if metric in by_guidance[g])
            gs = [g for g in gs if "clip_score" in by_guidance[g]]
            if not gs:
                continue
            xs = [_mean(by_guidance[g]["clip_score"]) for g in gs]
            ys = [_mean(by_guidance[g][metric]) for g in gs]
            k = len(by_guidance[gs[0]][metric])
            data = f", data {variant}" if len(variants) > 1 else ""
            ax.plot([x[0] for x in xs], [y[0] for y in ys], ms=5, lw=1.5, **style,
                    label=f"{name} (K = {k}{data})")  # fmt: skip
            ax.vlines([x[0] for x in xs], [y[1] for y in ys], [y[2] for y in ys],
                      color=style["color"], lw=0.8, alpha=0.6)  # fmt: skip
            for x, y in zip(xs, ys, strict=True):
                if len(y[3]) > 1:
                    ax.scatter([x[0]] * len(y[3]), y[3], s=6, color=style["color"], alpha=0.3)
            for g, x, y in ((gs[0], xs[0], ys[0]), (gs[-1], xs[-1], ys[-1])):
                ax.annotate(f"g={g:g}", (x[0], y[0]), fontsize=6, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("CLIP score (judge), higher is better")
        ax.set_ylabel(f"{metric}, lower is better")
        ax.set_title(f"{metric} against CLIP score over guidance (bars: {metric} interval)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _index(order: tuple[str, ...], value: str) -> int:
    return order.index(value) if value in order else len(order)
