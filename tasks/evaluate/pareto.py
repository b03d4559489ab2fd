"""The sweep's Pareto plot: CLIP score against FID and fd_clip, one curve per model, guidance
along it (Imagen Fig. 4), each point with its interval on both axes."""

from __future__ import annotations

from pathlib import Path

from tasks.evaluate.report import DISTANCES, points_by_model


def _error_bars(rows: list[dict]) -> list[list[float]]:
    """matplotlib's asymmetric bars: distances from the value down and up (never negative)."""
    return [
        [max(r["value"] - r["ci_low"], 0.0) for r in rows],
        [max(r["ci_high"] - r["value"], 0.0) for r in rows],
    ]


def pareto_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = points_by_model(rows)
    fig, axes = plt.subplots(1, len(DISTANCES), figsize=(6 * len(DISTANCES), 4.5))
    for ax, metric in zip(axes, DISTANCES, strict=True):
        for model, by_guidance in sorted(points.items()):
            gs = sorted(by_guidance)
            x = [by_guidance[g]["clip_score"] for g in gs]
            y = [by_guidance[g][metric] for g in gs]
            ax.errorbar(
                [r["value"] for r in x], [r["value"] for r in y],
                xerr=_error_bars(x),
                yerr=_error_bars(y),
                marker="o", ms=3, capsize=2, label=model,
            )  # fmt: skip
            for g, xr, yr in zip(gs, x, y, strict=True):
                ax.annotate(f"{g:g}", (xr["value"], yr["value"]), fontsize=6, alpha=0.7)
        ax.set_xlabel("CLIP score (judge), higher is better")
        ax.set_ylabel(f"{metric}, lower is better")
        ax.set_title(f"{metric} against CLIP score over guidance")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
