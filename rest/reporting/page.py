"""The report's HTML page, section by section: each `*_section(data)` returns its HTML parts, and `render` puts them
in order. `data` is verdicts.collect's; the plots come from plots.py."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from rest.artifacts import manifests
from rest.artifacts.run import SUMMARY_ROWS, Run, shown
from rest.evaluation.control import grow_coverage, n_label
from rest.evaluation.names import sampled_keys, selected_by
from rest.reporting.plots import plots
from rest.reporting.verdicts import grow_verdicts, monitor_lines

EXAMPLES = 5  # sources shown with all their samples, per Grow step


def esc(v: Any) -> str:
    return html.escape(str(v))


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc('' if v is None else v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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
        samples = table(
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
            f"<p><b>source</b> <code>{esc(head.source)}</code> &rarr; <b>reference</b> "
            f"<code>{esc(head.reference)}</code></p>{samples}"
        )
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.alarm{color:#b00020;font-weight:600}.ok{color:#1b5e20}img{max-width:100%}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}"""


def summarised(items: list, what: str, best: str | None = None, limit: int = SUMMARY_ROWS) -> tuple[list, str]:
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
        out.append(f"<p><b>{esc(control['verdict'])}</b></p>")
    steps = control["monitor"]["steps"] if control["monitor"] else []
    rows = [
        [r["policy"], r["steps"], r["rest"], r["bc"], f"{r['lead']:+.2f}", r["noise"], r.get("gain"), r.get("bc_gain")]
        for r in steps
    ]
    words = data["control_words"]
    out.append(
        table(
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
        out.append(f'<p class="alarm">{esc(control["monitor"]["line"])}</p>')
    return out


def coverage_section(data: dict[str, Any]) -> list[str]:
    """Per Grow step: pass@N of its sources against the greedy accuracy of the policy it sampled, and what it kept
    by source difficulty."""
    grows = summarised(data["grows"], "Grow steps", limit=4)[0]
    if not grows:
        return []
    run = Run.open(data["run"])
    cover = [grow_coverage(run, int(g.split("-")[1]), data["rows"][g]) for g in grows]
    out = [
        "<h2>What Grow found that the policy did not yet say</h2><p>A sample counts when its reward clears the "
        "last threshold; greedy is how often the policy Grow sampled from clears it on validation. pass@N above "
        "greedy is what Improve can teach; sources by difficulty (the share of their samples that clear it) say "
        "whether the kept samples come from sources the policy already gets right.</p>",
        table(
            ["Grow step", "policy", "tau", "greedy (valid)", "pass@1 (pool)", "pass@N (pool)", "N"],
            [
                [c["grow"], c["policy"], c["tau"], c["greedy_valid"], c["pass@1"], c["pass@N"], n_label(c)]
                for c in cover
            ],
        ),
        table(
            ["Grow step", "difficulty", "sources", "samples clearing tau", "distinct"],
            [
                [c["grow"], d["difficulty"], d["sources"], d["samples"], d["distinct"]]
                for c in cover
                for d in c["difficulty"]
            ],
        ),
    ]
    return out


def header_section(data: dict[str, Any]) -> list[str]:
    """The run, when it was made, and its best policy."""
    run, record = data["run"], data["record"]
    return [
        f"<h1>ReST run <code>{esc(run.resolve().name)}</code></h1>",
        f"<p>Run directory: <code>{esc(run.resolve())}</code>; created {esc(record.get('created'))}; "
        f"best policy by {esc(selected_by(data['cfg']))}: <b>{esc(record.get('best_policy'))}</b>.</p>",
    ]


def grow_section(data: dict[str, Any]) -> list[str]:
    """Did each Grow step help: the policy before it against the best of its Improve steps."""
    verdicts = grow_verdicts(data)
    sections: list[str] = []
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
            for v in summarised(verdicts, "Grow steps")[0]
        ]
        if len(verdicts) > SUMMARY_ROWS:
            sections.append(
                f"<p>{sum(v['helped'] for v in verdicts)} of {len(verdicts)} validated Grow steps helped.</p>"
            )
        sections.append(
            table(
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
    return sections


def scales_section(data: dict[str, Any]) -> list[str]:
    """Each reward of the Grow samples, over the rows it applies to."""
    sections: list[str] = []
    scales = [
        [grow, name, c["applies"], c["mean"], *(c[f"p{k}"] for k in (10, 25, 50, 75, 90))]
        for grow in summarised(data["grows"], "Grow steps", limit=4)[0]
        for name, c in data["manifests"][grow]["stats"].get("components", {}).items()
    ]
    if scales:
        sections.append(
            "<h2>Reward scales</h2><p>Each reward of the Grow samples, over the rows it applies to: the scale "
            "<code>improve.thresholds</code> are chosen on.</p>"
            + table(["Grow step", "reward", "applies", "mean", "p10", "p25", "p50", "p75", "p90"], scales)
        )
    return sections


def monitors_section(data: dict[str, Any]) -> list[str]:
    """The monitors' lines, their numbers per policy, and the reward probes."""
    names = data["policies"]
    sections: list[str] = []
    sections.append(
        "<h2>Monitors</h2><ul>"
        + "".join(f'<li class="{lvl}">{esc(t)}</li>' for lvl, t in monitor_lines(data))
        + "</ul>"
    )
    mon_rows = []
    for n in summarised(names, "policies")[0]:
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
        table(
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
        + summarised(names, "policies")[1]
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
        sections.append(table(["reward", "untouched reference"] + probe_names, prow))
    return sections


def plots_section(data: dict[str, Any]) -> list[str]:
    """The plots (plots.py), as embedded images."""
    sections: list[str] = []
    sections.append(
        "<h2>Plots</h2><div class=plots>"
        + "".join(
            f'<figure><img alt="{esc(t)}" src="{uri}"><figcaption>{esc(t)}</figcaption></figure>'
            for t, uri in plots(data)
        )
        + "</div>"
    )
    return sections


def validation_section(data: dict[str, Any]) -> list[str]:
    """Validation metrics of the policies shown, and test metrics."""
    record, names = data["record"], data["policies"]
    sections: list[str] = []
    sections.append("<h2>Validation metrics</h2>")
    picked = summarised(names, "policies", best=record.get("best_policy"))[0]
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
        table(
            ["policy", "exact match", "chrF", "BLEU", "reward", "tokens", *sampled],
            [[n] + [data["metrics"][n]["valid"].get(k) for k in keys] for n in picked],
        )
    )
    sections.append(summarised(names, "policies", best=record.get("best_policy"))[1])
    if record.get("test"):
        sections.append(
            "<h3>Test</h3>"
            + table(
                ["policy", "exact match", "chrF", "BLEU", "reward", *sampled],
                [
                    [n] + [m.get(k) for k in ("exact_match", "chrf", "bleu", "reward", *sampled)]
                    for n, m in record["test"].items()
                ],
            )
        )
    return sections


def samples_section(data: dict[str, Any]) -> list[str]:
    """A few sources of each Grow step shown, with all their samples."""
    sections: list[str] = []
    grows, note = summarised(data["grows"], "Grow steps", limit=4)
    for grow in grows:
        sections.append(f"<h2>Samples of {grow} (sampled by {esc(data['manifests'][grow]['policy'])})</h2>")
        sections.append(examples(data, grow))
    sections.append(note)
    return sections


def lineage_section(data: dict[str, Any]) -> list[str]:
    """Every artifact, its id and its parents."""
    record = data["record"]
    sections: list[str] = []
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
    lineage, lineage_note = summarised(lineage, "artifacts", limit=4 * SUMMARY_ROWS)
    sections.append(
        "<h2>Lineage</h2>" + table(["artifact", "kind", "id", "parents", "created"], lineage) + lineage_note
    )
    return sections


def config_section(data: dict[str, Any]) -> list[str]:
    """The resolved config."""
    run = data["run"]
    sections: list[str] = []
    sections.append("<h2>Config</h2><pre>" + esc((run / manifests.CONFIG_FILE).read_text()) + "</pre>")
    return sections


SECTIONS = (
    header_section,
    grow_section,
    control_section,
    coverage_section,
    scales_section,
    monitors_section,
    plots_section,
    validation_section,
    samples_section,
    lineage_section,
    config_section,
)


def render(data: dict[str, Any]) -> str:
    """The whole page: every section in order, with its style."""
    run = data["run"]
    sections = [part for section in SECTIONS for part in section(data)]
    head = f"<meta charset=utf-8><title>ReST run {esc(run.resolve().name)}</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(sections)}</body></html>"
