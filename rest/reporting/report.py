"""`rest report RUN`: one self-contained HTML page (RUN/report/index.html) that answers, in a minute,
"did each Grow step help, what did it cost, and is the policy gaming the reward?"

    path = write_report(Path("runs/numbers"))

Everything comes from the run directory (manifests, metrics.json, shards, valid_outputs.parquet); plots are
matplotlib PNGs embedded as data URIs, so the page opens anywhere, offline, with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: the same on a laptop and on a worker
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rest.artifacts import manifests  # noqa: E402
from rest.artifacts.run import SUMMARY_ROWS, Run, shown  # noqa: E402
from rest.artifacts.shards import read_grow  # noqa: E402
from rest.errors import RestError  # noqa: E402
from rest.evaluation.control import control_metric, control_summary, grow_coverage, n_label  # noqa: E402
from rest.evaluation.names import input_use_line, sampled_keys, selected_by  # noqa: E402

REPORT_DIR = "report"
EXAMPLES = 5  # sources shown with all their samples, per Grow step


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


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc('' if v is None else v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---------------------------------------------------------------------------------------------------------------
# What the page says


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


# ---------------------------------------------------------------------------------------------------------------
# The plots


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


# ---------------------------------------------------------------------------------------------------------------
# Examples: a few sources with all their samples


def examples(data: dict[str, Any], grow: str, n: int = EXAMPLES) -> str:
    rows = data["rows"][grow]
    thresholds = data["cfg"].improve.thresholds
    best = rows.groupby("source_id")["reward"].max().sort_values()
    # spread over the range of best rewards: the hardest source, the easiest, and some between
    picks = [best.index[int(round(q))] for q in np.linspace(0, len(best) - 1, min(n, len(best)))]
    parts = []
    for sid in dict.fromkeys(picks):
        group = rows[rows["source_id"] == sid].sort_values("reward", ascending=False)
        head = group.iloc[0]
        table = _table(
            ["sample", "completion", "reward", "kept at"],
            [
                [
                    int(r.sample_index),
                    r.completion,
                    f"{r.reward:.3f}",
                    ", ".join(f"tau={t}" for t in thresholds if r.reward >= t) or "-",
                ]
                for r in group.itertuples()
            ],
        )
        parts.append(
            f"<p><b>source</b> <code>{_esc(head.source)}</code> &rarr; <b>reference</b> "
            f"<code>{_esc(head.reference)}</code></p>{table}"
        )
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The page


CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.alarm{color:#b00020;font-weight:600}.ok{color:#1b5e20}img{max-width:100%}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}"""


def _summarised(items: list, what: str, best: str | None = None, limit: int = SUMMARY_ROWS) -> tuple[list, str]:
    """`items` as a page shows them: all, or `shown`'s pick (the first, the last, the best, evenly spaced between),
    and a sentence on how many were left out ("" when none): a run of 50 SuperHF iterations would list 100 rows."""
    keep = {items.index(best)} if best in items else set()
    picked = shown(len(items), keep, limit)
    if len(picked) == len(items):
        return items, ""
    return [items[k] for k in picked], (
        f"<p>{len(items) - len(picked)} of {len(items)} {what} not shown here: the "
        "first, the last and evenly spaced ones are (`rest inspect RUN --all` lists every artifact).</p>"
    )


def control_section(data: dict[str, Any]) -> list[str]:
    """ReST against its BC control at equal optimiser steps: the verdict on test, the steps on validation."""
    out = ["<h2>ReST against plain behaviour cloning</h2>"]
    control = data.get("control")
    if control is None:
        return out + [
            "<p>No BC control in this run: <code>eval.control: true</code> trains one (behaviour cloning alone for "
            "as many optimiser steps as the run's policies took); on a finished run, <code>rest run --run RUN "
            "eval.control=true</code> adds it.</p>"
        ]
    if control["verdict"]:
        out.append(f"<p><b>{_esc(control['verdict'])}</b></p>")
    steps = control["monitor"]["steps"] if control["monitor"] else []
    rows = [
        [r["policy"], r["steps"], r["rest"], r["bc"], f"{r['lead']:+.2f}", r["noise"], r.get("gain"), r.get("bc_gain")]
        for r in steps
    ]
    words = data["control_words"]
    out.append(
        _table(
            [
                "policy",
                "optimiser steps",
                f"ReST valid {words}",
                f"BC valid {words}",
                "lead",
                "noise (2 SE)",
                "gain of the step",
                "BC gain, same steps",
            ],
            rows,
        )
    )
    if control["monitor"] and control["monitor"]["fired"]:
        out.append(f'<p class="alarm">{_esc(control["monitor"]["line"])}</p>')
    return out


def coverage_section(data: dict[str, Any]) -> list[str]:
    """Per Grow step: pass@N of its sources against the greedy accuracy of the policy it sampled, and what it kept
    by source difficulty."""
    grows = _summarised(data["grows"], "Grow steps", limit=4)[0]
    if not grows:
        return []
    run = Run.open(data["run"])
    cover = [grow_coverage(run, int(g.split("-")[1]), data["rows"][g]) for g in grows]
    out = [
        "<h2>What Grow found that the policy did not yet say</h2><p>A sample counts when its reward clears the "
        "last threshold; greedy is how often the policy Grow sampled from clears it on validation. pass@N above "
        "greedy is what Improve can teach; sources by difficulty (the share of their samples that clear it) say "
        "whether the kept samples come from sources the policy already gets right.</p>",
        _table(
            ["Grow step", "policy", "tau", "greedy (valid)", "pass@1 (pool)", "pass@N (pool)", "N"],
            [
                [c["grow"], c["policy"], c["tau"], c["greedy_valid"], c["pass@1"], c["pass@N"], n_label(c)]
                for c in cover
            ],
        ),
        _table(
            ["Grow step", "difficulty", "sources", "samples clearing tau", "distinct"],
            [
                [c["grow"], d["difficulty"], d["sources"], d["samples"], d["distinct"]]
                for c in cover
                for d in c["difficulty"]
            ],
        ),
    ]
    return out


def render(data: dict[str, Any]) -> str:
    run, record, names = data["run"], data["record"], data["policies"]
    verdicts = grow_verdicts(data)
    sections = [
        f"<h1>ReST run <code>{_esc(run.resolve().name)}</code></h1>",
        f"<p>Run directory: <code>{_esc(run.resolve())}</code>; created {_esc(record.get('created'))}; "
        f"best policy by {_esc(selected_by(data['cfg']))}: <b>{_esc(record.get('best_policy'))}</b>.</p>",
    ]

    sections.append("<h2>Did each Grow step help?</h2>")
    if verdicts:
        rows = [
            [
                v["grow"],
                f"{v['before']} -> {v['after']}",
                f"{v['exact_match_delta']:+.2f}",
                f"{v['chrf_delta']:+.2f}",
                f"{v['reward_delta']:+.4f}",
                v["samples"],
                v["seconds"],
                "yes" if v["helped"] else "NO",
            ]
            for v in _summarised(verdicts, "Grow steps")[0]
        ]
        if len(verdicts) > SUMMARY_ROWS:
            sections.append(
                f"<p>{sum(v['helped'] for v in verdicts)} of {len(verdicts)} validated Grow steps helped.</p>"
            )
        sections.append(
            _table(
                [
                    "Grow step",
                    "policy before -> best of its Improve steps",
                    "valid exact match",
                    "valid chrF",
                    "valid reward",
                    "samples",
                    "seconds (sampling + training)",
                    "helped",
                ],
                rows,
            )
        )
    else:
        sections.append("<p>No Grow step with an Improve step yet.</p>")

    sections += control_section(data)
    sections += coverage_section(data)

    scales = [
        [grow, name, c["applies"], c["mean"], *(c[f"p{k}"] for k in (10, 25, 50, 75, 90))]
        for grow in _summarised(data["grows"], "Grow steps", limit=4)[0]
        for name, c in data["manifests"][grow]["stats"].get("components", {}).items()
    ]
    if scales:
        sections.append(
            "<h2>Reward scales</h2><p>Each reward of the Grow samples, over the rows it applies to: the scale "
            "<code>improve.thresholds</code> are chosen on.</p>"
            + _table(["Grow step", "reward", "applies", "mean", "p10", "p25", "p50", "p75", "p90"], scales)
        )

    sections.append(
        "<h2>Monitors</h2><ul>"
        + "".join(f'<li class="{lvl}">{_esc(t)}</li>' for lvl, t in monitor_lines(data))
        + "</ul>"
    )
    mon_rows = []
    for n in _summarised(names, "policies")[0]:
        m = data["metrics"][n].get("monitors", {})
        a, inp = m.get("alarm", {}), m.get("input", {})
        mon_rows.append(
            [
                n,
                m.get("drift_chrf"),
                m.get("drift_meteor"),
                m.get("length_ratio"),
                a.get("reward_delta"),
                a.get("chrf_delta"),
                "FIRED" if a.get("fired") else "-",
                inp.get("top_output_fraction"),
                inp.get("input_sensitivity"),
                "FIRED" if inp.get("ignores_input") else "-",
            ]
        )
    sections.append(
        _table(
            [
                "policy",
                "drift: chrF to policy-0 outputs",
                "METEOR to policy-0 outputs",
                "length / reference",
                "reward change",
                "chrF change",
                "alarm",
                "share of the commonest output",
                "NLL cost of shuffled sources",
                "ignores input",
            ],
            mon_rows,
        )
        + _summarised(names, "policies")[1]
    )
    probes = data["metrics"][names[0]].get("monitors", {}).get("probes", {}) if names else {}
    if probes:
        probe_names = list(next(iter(probes.values())))
        prow = []
        for reward, by in probes.items():
            ref = next((p["reference"] for p in by.values() if p["reference"] is not None), None)
            prow.append(
                [reward, ref]
                + [
                    ("n/a" if p["score"] is None else f"{p['score']:.3f}" + (" FLAGGED" if p["flagged"] else ""))
                    for p in by.values()
                ]
            )
        sections.append(
            "<p>Reward probes: the mean reward of perturbed validation references (a reward that scores a "
            "corrupted reference at or above the reference can be gamed):</p>"
        )
        sections.append(_table(["reward", "untouched reference"] + probe_names, prow))

    sections.append(
        "<h2>Plots</h2><div class=plots>"
        + "".join(
            f'<figure><img alt="{_esc(t)}" src="{uri}"><figcaption>{_esc(t)}</figcaption></figure>'
            for t, uri in plots(data)
        )
        + "</div>"
    )

    sections.append("<h2>Validation metrics</h2>")
    picked = _summarised(names, "policies", best=record.get("best_policy"))[0]
    sampled = sampled_keys(data["metrics"][picked[0]]["valid"]) if picked else []
    if sampled:
        e = data["cfg"].eval
        sections.append(
            f"<p>Greedy decoding, and {e.samples} samples per source at temperature {e.temperature} (top-p "
            f"{e.top_p}): pass@k is the unbiased estimate of the chance that one of k samples is correct (reward "
            f"1: verified), maj@{e.samples} how often the answer most samples give is a correct one "
            "(points).</p>"
        )
    keys = ["exact_match", "chrf", "bleu", "reward", "completion_tokens", *sampled]
    sections.append(
        _table(
            ["policy", "exact match", "chrF", "BLEU", "reward", "tokens", *sampled],
            [[n] + [data["metrics"][n]["valid"].get(k) for k in keys] for n in picked],
        )
    )
    sections.append(_summarised(names, "policies", best=record.get("best_policy"))[1])
    if record.get("test"):
        sections.append(
            "<h3>Test</h3>"
            + _table(
                ["policy", "exact match", "chrF", "BLEU", "reward", *sampled],
                [
                    [n] + [m.get(k) for k in ("exact_match", "chrf", "bleu", "reward", *sampled)]
                    for n, m in record["test"].items()
                ],
            )
        )

    grows, note = _summarised(data["grows"], "Grow steps", limit=4)
    for grow in grows:
        sections.append(f"<h2>Samples of {grow} (sampled by {_esc(data['manifests'][grow]['policy'])})</h2>")
        sections.append(examples(data, grow))
    sections.append(note)

    id_to_name = {a["id"]: a["name"] for a in record.get("artifacts", [])}
    lineage = [
        [
            a["name"],
            a["kind"],
            a["id"],
            ", ".join(id_to_name.get(p, p) for p in a["parents"]) or "-",
            data["manifests"].get(a["name"], {}).get("created", ""),
        ]
        for a in record.get("artifacts", [])
    ]
    lineage, lineage_note = _summarised(lineage, "artifacts", limit=4 * SUMMARY_ROWS)
    sections.append(
        "<h2>Lineage</h2>" + _table(["artifact", "kind", "id", "parents", "created"], lineage) + lineage_note
    )
    sections.append("<h2>Config</h2><pre>" + _esc((run / manifests.CONFIG_FILE).read_text()) + "</pre>")
    head = f"<meta charset=utf-8><title>ReST run {_esc(run.resolve().name)}</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(sections)}</body></html>"


def write_report(run_dir: Path) -> Path:
    """Write RUN/report/index.html (atomically: a reader never sees half a page) and return its path."""
    run_dir = Path(run_dir)
    data = collect(run_dir)
    if not data["policies"]:
        raise RestError(f"{run_dir} has no published policy yet: nothing to report")
    path = run_dir / REPORT_DIR / "index.html"
    path.parent.mkdir(exist_ok=True)
    manifests.write_atomic(path, render(data).encode())
    return path


def report_summary(run_dir: Path) -> dict[str, Any]:
    """The verdicts and monitor lines as JSON-able data (for `rest report --json` and tests)."""
    data = collect(run_dir)
    return {
        "grow": grow_verdicts(data),
        "monitors": [{"level": lvl, "text": t} for lvl, t in monitor_lines(data)],
        "control": data["control"],
    }
