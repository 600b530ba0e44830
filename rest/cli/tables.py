"""What the CLI prints about a run: the summary table, the inspect rows, monitor alarms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.artifacts.run import Run, shown
from rest.errors import RestError
from rest.evaluation.control import control_metric, has_control, not_helping, step_rows, verdict_line
from rest.evaluation.names import input_use_line, sampled_keys, selected_by
from rest.improve.batches import data_of


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(column: str, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):  # rewards live in [0, 1] and need 3 decimals; points (0-100) and lengths need 1
            return f"{v:.3f}" if column == "reward" else f"{v:.1f}"
        return str(v)

    cells = [header] + [[fmt(c, v) for c, v in zip(header, r)] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_summary(run_dir: Path) -> None:
    run = Run.open(run_dir)
    record = run.record
    names = run.assessed_policies()
    keep = {names.index(record["best_policy"])} if record.get("best_policy") in names else set()
    header = ["policy", "exact_match", "chrF", "BLEU", "reward", "tokens"]
    picked = [names[k] for k in shown(len(names), keep)]
    extra = sampled_keys(run.metrics(picked[0])["valid"]) if picked else []

    def cells(m: dict[str, Any]) -> list[Any]:
        return [m["exact_match"], m["chrf"], m["bleu"], m["reward"], m["completion_tokens"]] + [m.get(k) for k in extra]

    rows = [[n, *cells(run.metrics(n)["valid"])] for n in picked]
    left_out = len(run.policies()) - len(rows)
    sampled = (
        f"; {'/'.join(extra)} of {run.config.eval.samples} samples at temperature {run.config.eval.temperature}"
        if extra
        else ""
    )
    print(
        f"\nValidation ({run.config.data.valid}), greedy decoding{sampled}"
        + (
            f"; {left_out} of {len(run.policies())} policies not shown (not validated, eval.every, or summarised: "
            f"rest inspect {run_dir} --all):"
            if left_out
            else ":"
        )
    )
    print(format_table(header + extra, rows))
    test = record.get("test", {})
    if test:
        print(f"\nTest ({run.config.data.test}); best policy by {selected_by(run.config)}: {record['best_policy']}")
        print(format_table(header + extra, [[n, *cells(m)] for n, m in test.items()]))
    print_control(run)
    print(f"\nRun directory: {run_dir}  (rest inspect {run_dir}; pandas.read_parquet('{run_dir}/grow-1'))")
    report = run_dir / "report" / "index.html"
    if report.is_file():
        print(f"Report (plots, monitors, samples): {report}")
    for line in monitor_alarms(run_dir):
        print(f"MONITOR: {line}")


def control_table(run: Run) -> str | None:
    """ReST's validated policies against the BC control at the same optimiser steps (eval.control), or None."""
    if not has_control(run):
        return None
    rows = step_rows(run)
    header = ["policy", "steps", "ReST", "BC", "lead", "noise", "gain", "BC gain"]
    return format_table(
        header,
        [
            [
                r["policy"],
                r["steps"],
                r["rest"],
                r["bc"],
                f"{r['lead']:+.1f}",
                r["noise"],
                r.get("gain"),
                r.get("bc_gain"),
            ]
            for r in rows
        ],
    )


def print_control(run: Run) -> None:
    table = control_table(run)
    if table is None:
        return
    _, words = control_metric(run.config)
    print(f"\nReST against its BC control at equal optimiser steps (validation {words}; noise: 2 paired SE):")
    print(table)
    verdict = verdict_line(run.record)
    if verdict:
        print(verdict)


def monitor_alarms(run_dir: Path) -> list[str]:
    run = Run.open(run_dir)
    names = run.assessed_policies()
    out = []
    helping = not_helping(run)
    if helping and helping["fired"]:
        out.append(helping["line"])
    for name in names:
        monitors = run.metrics(name).get("monitors") or {}
        if monitors.get("input", {}).get("ignores_input"):
            out.append(input_use_line(name, monitors["input"]))
        alarm = monitors.get("alarm", {})
        if alarm.get("fired"):
            out.append(
                f"{name}: reward {alarm['reward_delta']:+.4f} while chrF {alarm['chrf_delta']:+.2f} (vs "
                f"{alarm['previous']})"
            )
    if names:
        out += run.metrics(names[0]).get("monitors", {}).get("probe_flags", [])
    return out


def inspect_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per artifact directory, published, partial or damaged, in the order run.json lists them."""
    from rest.artifacts import manifests

    run = Run.open(run_dir)
    record = run.record
    order = [a["name"] for a in record.get("artifacts", [])]
    dirs = [p.name for p in sorted(run_dir.iterdir()) if p.is_dir() and not p.name.startswith((".", "report", "comet"))]
    names = order + [d for d in dirs if d not in order]
    id_to_name = {a["id"]: a["name"] for a in record.get("artifacts", [])}
    rows = []
    for name in names:
        row: dict[str, Any] = {"artifact": name, "kind": "partial", "id": None, "parent": None}
        if run.manifest(name) is None:
            rows.append(row)
            continue
        try:
            manifest = run.verified(name)  # numbers shown are numbers checked: an edited manifest is not shown
        except RestError as exc:
            row.update(kind="damaged", problem=str(exc))
            rows.append(row)
            continue
        row.update(
            kind=manifest["kind"],
            id=manifest["id"],
            parent=", ".join(id_to_name.get(p, p) for p in manifest["parents"]),
        )
        if manifest["kind"] == manifests.GROW:
            s = manifest["stats"]
            row.update(
                rows=s["rows"],
                reward=s["reward_mean"],
                kept=" ".join(f"{t}:{f:.2f}" for t, f in s["kept_fraction"].items()),
                length=s["completion_tokens"],
            )
        else:
            m = run.metrics(name)
            row["steps"] = m["train"]["steps"]
            if m["valid"] is not None:  # None: not validated (eval.every)
                v = m["valid"]
                row.update(
                    reward=v["reward"],
                    valid_exact_match=v["exact_match"],
                    valid_chrf=v["chrf"],
                    length=v["completion_tokens"],
                )
            if "improve" in m:
                sel = m["improve"]  # a preference loss learns from pairs: their count instead of a fraction kept
                row["kept"] = data_of(sel).kept(sel)
        rows.append(row)
    return rows


def summarise_rows(rows: list[dict[str, Any]], best: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The rows `rest inspect` prints without --all: every artifact of the Grow steps `shown` picks (first, last,
    evenly spaced, the best policy's, any with a partial or damaged artifact) and those of no Grow step; and a line
    on the rest."""
    step = {
        r["artifact"]: int(r["artifact"].split("-")[1]) for r in rows if r["artifact"].startswith(("grow-", "improve-"))
    }
    steps = sorted(set(step.values()))
    flagged = {
        steps.index(step[r["artifact"]])
        for r in rows
        if r["artifact"] in step and (r["kind"] in ("partial", "damaged") or r["artifact"] == best)
    }
    picked = {steps[k] for k in shown(len(steps), flagged)}
    out = [r for r in rows if r["artifact"] not in step or step[r["artifact"]] in picked]
    if len(picked) == len(steps):
        return out, None
    grow = [r for r in rows if r["artifact"].startswith("grow-") and r.get("reward") is not None]
    trend = (
        f"; Grow mean reward {grow[0]['reward']:.3f} (grow-{step[grow[0]['artifact']]}) -> {grow[-1]['reward']:.3f} "
        f"(grow-{step[grow[-1]['artifact']]})"
        if grow
        else ""
    )
    return (
        out,
        f"{len(steps) - len(picked)} of {len(steps)} Grow steps and their Improve steps not shown{trend} (--all lists "
        "them)",
    )
