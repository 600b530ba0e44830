"""ReST against its BC control at equal optimiser steps: the verdict, the per-step comparison, the "ReST is not
helping" monitor, and what Grow found that the policy did not yet say (pass@N of the pool against greedy).

The control (`eval.control`, rest/stages/control.py) is behaviour cloning alone on data.train for as many
optimiser steps as the run's policies took in all, validated at each policy's step count (its curve) and picked
among those by the run's own rule (eval.select_by), as ReST's best policy is. Scores are per row in [0, 1]: exact
match of the output with the reference, or the reward where it is a verifier's (`math`, `code`: the reference is
one worked solution of many, the reward says whether the answer is right). Two policies are compared on the same
rows, so the noise of a difference is the paired standard error: sd(a_i - b_i) / sqrt(n). "Within noise" is a
difference below two of them (about 95%).

Torch-free: the command line and the report read it from the run's files.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rest.artifacts.run import VALID_OUTPUTS, Run
from rest.config import is_verifier

if TYPE_CHECKING:
    from rest.config import RunConfig

CONTROL = "control"  # the control's artifact directory in a run
CURVE_FILE = "curve.parquet"  # the control's validation outputs at each policy's step count
NOISE_SE = 2.0  # "within noise": a difference below this many paired standard errors


def control_metric(cfg: RunConfig) -> tuple[str, str]:
    """(key, words) of what the comparison counts: exact match, or the verifier's reward (accuracy)."""
    if is_verifier(cfg.reward.components, cfg.reward):  # they say right or wrong: their reward is compared
        return "reward", "accuracy (" + " + ".join(sorted(cfg.reward.components)) + " verified)"
    return "exact_match", "exact match"


def row_scores(outputs: pd.DataFrame, metric: str) -> np.ndarray:
    """Per row in [0, 1]: exact match (outer whitespace stripped, as rewards.metrics.exact_match) or the reward."""
    if metric == "reward":
        return outputs["reward"].to_numpy(dtype=np.float64)
    return np.array(
        [float(str(o).strip() == str(r).strip()) for o, r in zip(outputs["output"], outputs["reference"])],
        dtype=np.float64,
    )


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean of a - b, its paired standard error), both in points (x 100)."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired scores need equal, non-empty rows: {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return round(100 * float(d.mean()), 2), round(100 * se, 2)


def policy_steps(run: Run) -> dict[str, int]:
    """Every published policy's optimiser steps spent by the run up to and including it (publication order):
    policy-0's BC steps, then each Improve step's added, whatever it started from (improve.init: policy-0
    restarts too: the steps were spent)."""
    out, total = {}, 0
    for name in run.policies():
        total += int(run.metrics(name)["train"]["steps"])
        out[name] = total
    return out


def control_marks(run: Run) -> list[int]:
    """The step counts the control is validated at: those of the run's validated policies (distinct, rising)."""
    steps = policy_steps(run)
    return sorted({steps[n] for n in run.assessed_policies()})


def has_control(run: Run) -> bool:
    return run.manifest(CONTROL) is not None


def control_curve(run: Run) -> pd.DataFrame:
    return pd.read_parquet(run.dir(CONTROL) / CURVE_FILE)


def step_rows(run: Run) -> list[dict[str, Any]]:
    """Per validated policy: its steps, its validation score, the control's at the same steps, ReST's lead (points)
    and its noise (2 paired standard errors), and for an Improve step its gain over the policy before it against
    BC's gain over the same steps. `no_gain`: the step's gain is within noise of BC's (or below it)."""
    run.verified(CONTROL)
    metric, _ = control_metric(run.config)
    curve = control_curve(run)
    steps = policy_steps(run)
    rows: list[dict[str, Any]] = []
    for name in run.assessed_policies():
        at = curve[curve["steps"] == steps[name]]
        if at.empty:  # a policy published after the control was trained (grow.steps raised): retrain it
            continue
        ours = row_scores(pd.read_parquet(run.dir(name) / VALID_OUTPUTS), metric)
        bc = row_scores(at.reset_index(drop=True), metric)
        lead, se = paired(ours, bc)
        row = {
            "policy": name,
            "steps": steps[name],
            "rest": round(100 * float(ours.mean()), 2),
            "bc": round(100 * float(bc.mean()), 2),
            "lead": lead,
            "noise": round(NOISE_SE * se, 2),
        }
        if rows and name != "policy-0":
            before = rows[-1]
            row["gain"] = round(row["rest"] - before["rest"], 2)
            row["bc_gain"] = round(row["bc"] - before["bc"], 2)
            row["no_gain"] = row["gain"] - row["bc_gain"] <= row["noise"]
        rows.append(row)
    return rows


def grow_coverage(run: Run, g: int, rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """What Grow step g found, at the top threshold: pass@1 and pass@N of its sources (a sample counts when its
    reward clears the last tau), against how often the policy it sampled from clears it greedily on validation;
    and its sources by difficulty (the share of their N samples that clear it) with the samples that do."""
    from rest.artifacts.shards import read_grow

    tau = max(run.config.improve.thresholds)
    if rows is None:
        rows = read_grow(run.dir(f"grow-{g}"), columns=["source_id", "completion", "reward"])
    rows = rows[["source_id", "completion", "reward"]].copy()
    rows["hit"] = rows["reward"] >= tau - 1e-9
    per = rows.groupby("source_id", sort=False)["hit"].agg(["sum", "count"])
    rate = per["sum"] / per["count"]
    policy = run.grow_policy(g)
    greedy = None
    if run.manifest(policy) is not None and (run.dir(policy) / VALID_OUTPUTS).is_file():
        valid = pd.read_parquet(run.dir(policy) / VALID_OUTPUTS, columns=["reward"])
        greedy = round(100 * float((valid["reward"] >= tau - 1e-9).mean()), 2)
    bins = [
        ("none", rate == 0),
        ("hard (<25%)", (rate > 0) & (rate < 0.25)),
        ("medium", (rate >= 0.25) & (rate < 0.75)),
    ]
    bins.append(("easy (>=75%)", rate >= 0.75))
    hits = rows[rows["hit"]]
    distinct = hits.drop_duplicates(["source_id", "completion"]).groupby("source_id").size()
    difficulty = []
    for label, mask in bins:
        ids = per.index[mask.to_numpy()]
        difficulty.append(
            {
                "difficulty": label,
                "sources": int(len(ids)),
                "samples": int(per.loc[ids, "sum"].sum()),
                "distinct": int(distinct.reindex(ids).fillna(0).sum()),
            }
        )
    return {
        "grow": f"grow-{g}",
        "policy": policy,
        "tau": tau,
        "samples_per_source": int(per["count"].max()) if len(per) else 0,
        # below the max where sources got more samples than others (grow.hard_samples, since removed)
        "samples_min": int(per["count"].min()) if len(per) else 0,
        "pass@1": round(100 * float(rate.mean()), 2),
        "pass@N": round(100 * float((per["sum"] > 0).mean()), 2),
        "greedy_valid": greedy,
        "difficulty": difficulty,
    }


def n_label(cover: dict[str, Any]) -> str:
    """The N of grow_coverage's pass@N: "8", or "8-24" for a Grow step where sources got more samples than others."""
    low, high = cover["samples_min"], cover["samples_per_source"]
    return str(high) if low == high else f"{low}-{high}"


def verdict_line(record: dict[str, Any]) -> str | None:
    """The plain verdict on test from run.json's `control` entry (finish_run writes it), or None."""
    c = record.get("control")
    if not c:
        return None
    head = (
        f"ReST {c['lead']:+.1f} test {c['words']} over BC at {c['steps']} steps"
        if c["lead"] > c["noise"]
        else f"ReST did not beat BC: {c['lead']:+.1f} test {c['words']} at {c['steps']} steps (noise {c['noise']:.1f})"
    )
    return (
        f"{head} ({c['policy']} {c['rest']:.1f} vs the BC control {c['bc']:.1f}, its checkpoint at "
        f"{c['control_steps']} steps chosen by validation; noise: 2 paired standard errors over {c['n']} rows)"
    )


def monitor_fires(rows: list[dict[str, Any]], at_best: dict[str, Any]) -> tuple[bool, list[str]]:
    """(fired, the Improve steps that gained no more than BC) from step_rows: fires when the best policy's lead over
    the control is within noise (or negative), or when the Improve steps together did not add to the lead policy-0
    had (the lead came from BC alone). Single steps within noise do not fire it when their sum is not: two steps
    of +3.6 over BC, each within a noise of 3.9, are a lead of +7.2 (arith, seed 1)."""
    improve = [r for r in rows if "gain" in r]
    flat = [r["policy"] for r in improve if r["no_gain"]]
    added = at_best["lead"] - rows[0]["lead"]  # what the Improve steps up to the best policy added to the lead
    fired = at_best["lead"] <= at_best["noise"] or (bool(improve) and added <= at_best["noise"])
    return fired, flat


def not_helping(run: Run) -> dict[str, Any] | None:
    """The "ReST is not helping" monitor on validation (monitor_fires). Returns {fired, line, steps: step_rows}
    or None without a control."""
    if not has_control(run):
        return None
    rows = step_rows(run)
    best = run.best_policy
    at_best = next((r for r in rows if r["policy"] == best), rows[-1] if rows else None)
    if at_best is None:
        return None
    _, words = control_metric(run.config)
    fired, flat = monitor_fires(rows, at_best)
    line = None
    if fired:
        line = (
            f"ReST is not helping: {at_best['policy']} leads the BC control at {at_best['steps']} steps by "
            f"{at_best['lead']:+.1f} validation {words} (noise {at_best['noise']:.1f})"
            + (f"; {', '.join(flat)} gained no more than BC over the same steps" if flat else "")
            + ". Try: "
            + "; ".join(tries(run))
        )
    return {"fired": fired, "line": line, "steps": rows}


def tries(run: Run) -> list[str]:
    """What to try when ReST does not beat its control, from what the run's Grow steps show."""
    cfg = run.config
    out = []
    grows = run.grow_steps()
    if grows:
        last = run.verified(f"grow-{grows[-1]}")["stats"]
        kept = float(last["kept_fraction"].get(str(max(cfg.improve.thresholds)), 1.0))
        cover = grow_coverage(run, grows[-1])
        if kept < 0.05:
            out.append(
                f"only {100 * kept:.1f}% of grow-{grows[-1]}'s samples cleared tau {max(cfg.improve.thresholds)}: "
                "lower improve.thresholds or use improve.selection=percentile, so Improve learns from more than a few "
                "hundred easy pairs"
            )
        if cover["greedy_valid"] is not None and cover["pass@N"] - cover["greedy_valid"] < 5:
            out.append(
                f"Grow found little the policy did not already say (pass@{n_label(cover)} "
                f"{cover['pass@N']:.1f} vs greedy {cover['greedy_valid']:.1f}): Improve learns the sources it "
                "already gets right; more grow.num_samples or a higher grow.temperature may find the hard ones"
            )
    p0 = run.metrics("policy-0")
    if cfg.bc.valid_every is None or p0["train"]["steps"] >= cfg.bc.steps:
        out.append(
            f"train policy-0 until validation stops improving before Grow (bc.valid_every: 100 with a larger bc.steps "
            f"than {cfg.bc.steps}): ReST wins at equal steps once BC has learnt what the labelled pairs teach, and "
            "loses while BC is still learning (docs/methods.md, the recipe study)"
        )
    if len(cfg.improve.thresholds) > 1:
        out.append(
            "one Improve step per Grow step at the top threshold "
            f"(improve.thresholds: [{max(cfg.improve.thresholds)}]) "
            "with the steps of all of them"
        )
    return out


def control_summary(run: Run) -> dict[str, Any] | None:
    """Everything the report and `rest inspect` show of the comparison: the verdict, the monitor, the steps."""
    if not has_control(run):
        return None
    monitor = not_helping(run)
    metrics = json.loads((run.dir(CONTROL) / "metrics.json").read_text())
    return {
        "verdict": verdict_line(run.record),
        "monitor": monitor,
        "curve": metrics.get("curve", []),
        "selected_steps": metrics.get("selected_steps"),
    }
