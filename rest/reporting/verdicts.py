"""What a run's report says, read from its run directory: every artifact shown (verified first), the verdict on
each Grow step, and the monitors' lines. No matplotlib, no HTML (plots.py and page.py draw them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.artifacts.run import Run
from rest.artifacts.shards import read_grow
from rest.evaluation.control import control_metric, control_summary
from rest.evaluation.names import input_use_line


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, read from the run directory."""
    run = Run.open(run_dir)
    policies = run.assessed_policies()  # the policies with validation metrics (eval.every may skip some)
    grows = run.published("grow-")
    manifests = {n: run.verified(n) for n in run.policies() + grows}  # every artifact shown is checked first
    return {
        "run": run.path,
        "cfg": run.config,
        "record": run.record,
        "policies": policies,
        "all_policies": run.policies(),
        "metrics": {n: run.metrics(n) for n in policies},
        "manifests": manifests,
        "grows": grows,
        "rows": {g: read_grow(run.dir(g)) for g in grows},
        "control": control_summary(run),
        "control_words": control_metric(run.config)[1],
    }


def grow_verdicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per Grow step: the policy that sampled it against the best of its Improve steps (by validation reward, as
    the run picks its best policy), on validation. `helped`: reward up and exact match not down. With eval.every,
    a row spans the Grow steps since the last validated policy (`grow`: "grow-36..40"), seconds and samples summed."""
    out = []
    made = data["all_policies"]
    for grow in data["grows"]:
        g = int(grow.split("-")[1])
        after = [n for n in data["policies"] if n.startswith(f"improve-{g}-")]
        if not after:  # no validated Improve step (eval.every) after this Grow step
            continue
        before = grower = data["manifests"][grow]["policy"]
        first = g
        if grower not in data["metrics"]:  # the grower was not validated: the last validated policy before it
            before = [n for n in made[: made.index(grower) + 1] if n in data["metrics"]][-1]
            first = 1 if before == "policy-0" else int(before.split("-")[1]) + 1
        span = [f"grow-{k}" for k in range(first, g + 1) if f"grow-{k}" in data["manifests"]]
        best = max(after, key=lambda n: (data["metrics"][n]["valid"]["reward"], -after.index(n)))
        b, a = data["metrics"][before]["valid"], data["metrics"][best]["valid"]
        em, rw = a["exact_match"] - b["exact_match"], a["reward"] - b["reward"]
        trained = [n for n in made if n.startswith(tuple(f"improve-{k.split('-')[1]}-" for k in span))]
        seconds = sum(s["seconds"] for k in span for s in data["manifests"][k]["shards"])
        seconds += sum(data["manifests"][n]["timing"]["seconds"] for n in trained)
        out.append(
            {
                "grow": grow if len(span) == 1 else f"grow-{first}..{g}",
                "before": before,
                "after": best,
                "exact_match_delta": round(em, 2),
                "reward_delta": round(rw, 4),
                "chrf_delta": round(a["chrf"] - b["chrf"], 2),
                "helped": rw > 0 and em >= 0,
                "seconds": round(seconds, 1),
                "samples": sum(data["manifests"][k]["stats"]["rows"] for k in span),
            }
        )
    return out


def monitor_lines(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, sentence) pairs: `alarm` for a fired monitor, `ok` otherwise."""
    lines: list[tuple[str, str]] = []
    helping = (data.get("control") or {}).get("monitor")
    if helping:
        lines.append(
            ("alarm", helping["line"])
            if helping["fired"]
            else ("ok", "ReST beats its BC control at equal steps on validation beyond noise.")
        )
    for name in data["policies"]:
        mon = data["metrics"][name].get("monitors", {})
        if mon.get("input", {}).get("ignores_input"):
            lines.append(("alarm", input_use_line(name, mon["input"]) + "."))
        alarm = mon.get("alarm", {})
        if alarm.get("fired"):
            lines.append(
                (
                    "alarm",
                    f"{name}: the mean validation reward rose by {alarm['reward_delta']:+.4f} over "
                    f"{alarm['previous']} while chrF to the references fell by {alarm['chrf_delta']:+.2f}: "
                    "the policy may be gaming the reward.",
                )
            )
    first = data["metrics"][data["policies"][0]].get("monitors", {}) if data["policies"] else {}
    for line in first.get("probe_flags", []):  # the probes score references, so they are the same for every policy
        lines.append(("alarm", line[0].upper() + line[1:] + "."))
    last = data["metrics"][data["policies"][-1]].get("monitors", {}) if data["policies"] else {}
    if last:
        drift, ratio = last.get("drift_chrf"), last.get("length_ratio")
        level = "alarm" if (ratio is not None and not 0.8 <= ratio <= 1.25) else "ok"
        lines.append(
            (
                level,
                f"{data['policies'][-1]}: outputs are {ratio:.2f}x as long as the references "
                f"(characters) and score chrF {drift:.1f} against policy-0's outputs (100 = unchanged).",
            )
        )
    if not any(level == "alarm" for level, _ in lines):
        lines.insert(
            0,
            (
                "ok",
                "No monitor fired: every policy reads its input, no policy raised the reward while "
                "chrF to the references fell, and no reward probe scored a corrupted reference at or "
                "above the reference itself.",
            ),
        )
    return lines
