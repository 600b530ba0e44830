"""The report's plots: matplotlib PNGs embedded as data URIs, so the page opens anywhere, offline."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: the same on a laptop and on a worker
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rest.artifacts.run import shown  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(title: str):
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig, ax


def _ticks(ax, names: list[str]) -> None:
    """One tick label per bar or point, or, for many, those `shown` picks (50 iterations' names would overlap)."""
    picked = shown(len(names))
    ax.set_xticks(picked, [names[k] for k in picked], rotation=20 if len(picked) == len(names) else 35, fontsize=8)


def plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, data URI) of every plot."""
    out = []
    thresholds = data["cfg"].improve.thresholds
    names = data["policies"]
    x = np.arange(len(names))

    if data["grows"]:  # a BC-only run (grow.steps: 0) has no Grow step to plot
        # Many Grow steps (SuperHF): the first, the last and evenly spaced ones, not 50 curves and a 50-line legend
        grows = [data["grows"][k] for k in shown(len(data["grows"]), limit=6)]
        fig, ax = _figure(
            "Reward of the Grow samples"
            + ("" if len(grows) == len(data["grows"]) else f" ({len(grows)} of {len(data['grows'])} steps)")
        )
        bins = np.linspace(0, 1, 41)
        for grow in grows:
            rows = data["rows"][grow]
            ax.hist(
                rows["reward"],
                bins=bins,
                histtype="step",
                linewidth=1.8,
                label=f"{grow} (mean {rows['reward'].mean():.3f})",
            )
        for t in thresholds:
            ax.axvline(t, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")  # rewards pile up near 1 as the policy improves: a linear axis hides the tail that matters
        ax.set_xlabel("reward (dashed: thresholds tau)")
        ax.set_ylabel("samples (log scale)")
        ax.legend(fontsize=8)
        out.append(("Reward distribution per Grow step", _png(fig)))

        fig, ax = _figure("Fraction of Grow samples kept at each threshold")
        width = 0.8 / max(1, len(grows))
        for k, grow in enumerate(grows):
            rows = data["rows"][grow]
            kept = [float((rows["reward"] >= t).mean()) for t in thresholds]
            ax.bar(np.arange(len(thresholds)) + k * width, kept, width, label=grow)
        ax.set_xticks(np.arange(len(thresholds)) + width * (len(grows) - 1) / 2, [f"tau={t}" for t in thresholds])
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction kept")
        ax.legend(fontsize=8)
        out.append(("Fraction kept per threshold", _png(fig)))

    fig, ax = _figure("Validation metrics per policy")
    valid = [data["metrics"][n]["valid"] for n in names]
    ax.plot(x, [v["exact_match"] for v in valid], "o-", label="exact match (%)")
    ax.plot(x, [v["chrf"] for v in valid], "s-", label="chrF")
    ax.plot(x, [100 * v["reward"] for v in valid], "^--", label="reward x 100")
    _ticks(ax, names)
    ax.set_ylabel("points")
    ax.legend(fontsize=8)
    out.append(("Validation metrics per policy", _png(fig)))

    fig, ax = _figure("Output length per policy")
    mons = [data["metrics"][n].get("monitors", {}) for n in names]
    ax.bar(
        x,
        [data["metrics"][n]["valid"]["completion_tokens"] for n in names],
        color="tab:blue",
        alpha=0.7,
        label="tokens",
    )
    ax.set_ylabel("mean output tokens")
    _ticks(ax, names)
    ax2 = ax.twinx()
    ax2.plot(x, [m.get("length_ratio", np.nan) for m in mons], "o-", color="tab:red", label="length / reference length")
    ax2.axhline(1.0, color="tab:red", linestyle=":", linewidth=1)
    ax2.set_ylabel("chars / reference chars", color="tab:red")
    ax.legend(loc="lower left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    out.append(("Output length per policy", _png(fig)))

    fig, ax = _figure("Drift: chrF of each policy's outputs against policy-0's")
    ax.plot(x, [m.get("drift_chrf", np.nan) for m in mons], "o-", color="tab:purple")
    _ticks(ax, names)
    ax.set_ylabel("chrF to policy-0 outputs (100 = same)")
    out.append(("Drift per policy", _png(fig)))

    fig, ax = _figure("What each stage cost (seconds)")
    order = [a["name"] for a in data["record"].get("artifacts", []) if a["name"] in data["manifests"]]
    secs = []
    for n in order:
        m = data["manifests"][n]
        secs.append(sum(s["seconds"] for s in m["shards"]) if m["kind"] == "grow" else m["timing"]["seconds"])
    ax.bar(range(len(order)), secs, color=["tab:green" if n.startswith("grow") else "tab:blue" for n in order])
    _ticks(ax, order)
    ax.set_ylabel("seconds (Grow: sampling; policies: training)")
    out.append(("Cost per stage", _png(fig)))
    return out
