"""What evaluation's results are called, in tables and reports: the sampled metrics' keys, the rule that picks the
best policy, the line of a monitor that fired. Torch-free, so that the command line and the report can name them
without importing the models (`rest run` starts its Prefect server while torch loads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rest.config import RunConfig

SAMPLED = ("pass@", "maj@")  # the sampled evaluation's metrics (eval.samples), points


def sampled_keys(metrics: dict) -> list[str]:
    """The pass@k and maj@k keys of a policy's metrics, pass@ first, by k."""
    keys = [k for k in metrics if k.startswith(SAMPLED)]
    return sorted(keys, key=lambda k: (not k.startswith("pass@"), int(k.split("@")[1])))


def selected_by(cfg: RunConfig) -> str:
    """How a run picks its best policy, in words."""
    how = cfg.eval.select_by
    if how == "reward":
        return "validation reward"
    return f"validation {how}" + (f"@{cfg.eval.samples}" if how == "maj" else "")


def input_use_line(name: str, m: Mapping[str, Any]) -> str:
    """The plain-words line for a policy whose `input` monitor fired."""
    return (
        f"{name} ignores its input: {100 * m['top_output_fraction']:.0f}% of validation outputs are "
        f"{m['top_output']!r}, "
        "and pairing each reference with another row's source raises its NLL by only "
        f"{100 * m['input_sensitivity']:.1f}% "
        f"({m['nll']:.3f} -> {m['nll_shuffled_sources']:.3f}). It did not learn the task: nothing later can fix that. "
        "From scratch, try a lower bc.lr (5e-4), a longer warm-up (bc.warmup_fraction=0.2), more bc.steps or more "
        "labelled pairs; with model.architecture, keep a pre-LN model (configs/models/mbart-2.6m.json)"
    )
