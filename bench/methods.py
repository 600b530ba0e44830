"""The tables of docs/methods.md: every method of the pipeline on each embedded task, at equal optimiser steps and
equal Grow samples, 2 seeds each.

    .venv/bin/python bench/methods.py                          # runs what is missing, then writes the tables
    .venv/bin/python bench/methods.py --tasks g2p --seeds 0    # some of it (~25 min on 2 CPU cores)
    .venv/bin/python bench/methods.py --table                  # only the tables, from the runs already there

A method is a config in configs/ (written for g2p); a task is the data it points at (`--tasks`: g2p keeps the
config's data, numbers points it at data/numbers). Every row is one `rest run` command, printed in the table, so
every number can be reproduced alone. Runs go to runs/methods/<task>-<method>-s<seed> (with their log); a finished
run is not run again (rest run resumes a partial one). Each run is whole (nothing shared between rows), so its wall
time is what the method costs.

What a finished run shows is kept in bench/methods.jsonl (one line per task, method and seed, with the commit it
ran at), committed with the tables: a run directory is hundreds of MB and is not kept, the line is. The tables are
made from that file and go into docs/methods.md between its two `methods-table` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("runs/methods")
DOC = ROOT / "docs/methods.md"
LEDGER = ROOT / "bench/methods.jsonl"
SEEDS = (0, 1)
TASKS = {
    "g2p": [],
    "numbers": [
        "data.train=data/numbers/train.parquet",
        "data.pool=data/numbers/pool.parquet",
        "data.valid=data/numbers/valid.parquet",
        "data.test=data/numbers/test.parquet",
    ],
}
# name, config, overrides, what it is. Every row: 1800 optimiser steps of the policy (BC 600 + Improve 4 x 300, or
# SuperHF's 50 x 24; the BC control 1800 of BC) and 64,000 Grow samples on g2p (2 x 4000 x 8; SuperHF 50 x 160 x 8).
METHODS = [
    ("bc-control", "configs/g2p.yaml", ["grow.steps=0", "bc.steps=1800"], "behaviour cloning only, 1800 steps"),
    ("rest", "configs/g2p.yaml", [], "ReST: G=2, tau [0.95, 1.0], token NLL, fine-tune the previous policy"),
    (
        "rest-em",
        "configs/g2p.yaml",
        ["improve.init=policy-0", "improve.max_per_source=4"],
        "ReST-EM: every Improve step restarts from policy-0, at most 4 samples per source",
    ),
    (
        "superhf",
        "configs/superhf-g2p.yaml",
        [],
        "SuperHF: 50 x (160 fresh sources x 8, best of each, 24 steps, KL 0.1)",
    ),
    ("dpo-averaged", "configs/g2p-dpo.yaml", [], "iterative DPO, best vs worst, length-averaged log-likelihoods"),
    (
        "dpo-summed",
        "configs/g2p-dpo.yaml",
        ["improve.preference.average_log_prob=false"],
        "iterative DPO, best vs worst, summed log-likelihoods (DPO as published)",
    ),
    (
        "rest-scalar-rm",
        "configs/g2p.yaml",
        [],
        "ReST whose only reward is a regression model of chrF (no reference read)",
    ),
    (
        "rest-seq2seq-rm",
        "configs/g2p.yaml",
        [],
        "ReST whose only reward is the seq2seq reward model (no reference read)",
    ),
]
# The rows whose reward is a learned model: `rest reward train` first, on grow-1 of the same task and seed's `rest`
# row (policy-0's samples scored by chrF) from its policy-0, both kinds with the same budget; then ReST with it.
REWARD_MODELS = {
    "rest-scalar-rm": "configs/reward-numbers.yaml",
    "rest-seq2seq-rm": "configs/reward-numbers-seq2seq.yaml",
}
RM_BUDGET = ["train.steps=1000", "data.negatives=4"]
# A method's overrides on one task only: the same Grow samples as ReST on numbers' 2000-source pool (2 x 2000 x 8)
TASK_METHOD = {("numbers", "superhf"): ["grow.sources_per_step=80", "grow.shard_size=80"]}
START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"


def run_dir(task: str, method: str, seed: int) -> Path:
    return OUT / f"{task}-{method}-s{seed}"


def commands(task: str, name: str, config: str, overrides: list[str], seed: int) -> list[list[str]]:
    """The commands of one row: `rest run`, after `rest reward train` for a row with a learned reward."""
    run = run_dir(task, name, seed)
    out = []
    if name in REWARD_MODELS:
        rm, grower = OUT / f"{task}-{name}-model-s{seed}", run_dir(task, "rest", seed)
        out.append(
            [
                "rest",
                "reward",
                "train",
                "--config",
                REWARD_MODELS[name],
                "--out",
                str(rm),
                f"seed={seed}",
                f"data.shards=[{grower / 'grow-1'}]",
                f"model.pretrained={grower / 'policy-0'}",
                *RM_BUDGET,
            ]
        )
        overrides = [*overrides, "reward.components={learned: 1.0}", f"reward.learned={rm}"]
    out.append(
        [
            "rest",
            "run",
            "--config",
            config,
            "--run",
            str(run),
            f"seed={seed}",
            *TASKS[task],
            *overrides,
            *TASK_METHOD.get((task, name), []),
        ]
    )
    return out


def shown(cmds: list[list[str]]) -> str:
    """Commands as one shell line (a value with a space or brace quoted)."""
    return " && ".join(" ".join(f"'{a}'" if any(c in a for c in " {}[]") else a for a in cmd) for cmd in cmds)


def finished(run: Path) -> bool:
    record = run / "run.json"
    return record.is_file() and bool(json.loads(record.read_text()).get("test"))


def rows(tasks: list[str], seeds: list[int], only: list[str] | None = None):
    """(task, name, config, overrides, seed) of every row asked for, in table order."""
    for task in tasks:
        for name, config, overrides, _ in METHODS:
            for seed in seeds if only is None or name in only else []:
                yield task, name, config, overrides, seed


def run_missing(tasks: list[str], seeds: list[int], only: list[str] | None = None) -> None:
    for task, name, config, overrides, seed in rows(tasks, seeds, only):
        if name in REWARD_MODELS and not finished(run_dir(task, "rest", seed)):
            run_row(task, *next(m[:3] for m in METHODS if m[0] == "rest"), seed)  # its reward model's data
        if not finished(run_dir(task, name, seed)):
            run_row(task, name, config, overrides, seed)


def run_row(task: str, name: str, config: str, overrides: list[str], seed: int) -> None:
    """Run one row's commands (its log: runs/methods/<row>.log), time them, put the result into the ledger."""
    run = run_dir(task, name, seed)
    cmds = commands(task, name, config, overrides, seed)
    print("+", shown(cmds), flush=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(f"{run}.log", "w") as log:
        for cmd in cmds:
            subprocess.run(
                [str(ROOT / ".venv/bin" / cmd[0]), *cmd[1:]], check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
    (run / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    print(f"  {time.time() - t0:.0f} s", flush=True)
    record(task, name, seed, config, overrides)


def read_ledger() -> dict[tuple[str, str, int], dict]:
    """(task, method, seed) -> what its run showed (row_metrics, the command, the commit, the date)."""
    if not LEDGER.is_file():
        return {}
    rows = [json.loads(line) for line in LEDGER.read_text().splitlines() if line.strip()]
    return {(r["task"], r["method"], r["seed"]): r for r in rows}


def record(task: str, method: str, seed: int, config: str, overrides: list[str], loaded: bool = False) -> None:
    """Put the finished run of (task, method, seed) into bench/methods.jsonl, replacing an older line of it.
    `loaded`: the run shared the machine with other work, so its wall time is kept but the table leaves it out."""
    run = run_dir(task, method, seed)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    ledger = read_ledger()
    ledger[(task, method, seed)] = {
        "task": task,
        "method": method,
        "seed": seed,
        "command": shown(commands(task, method, config, overrides, seed)),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        **row_metrics(run),
        **({"loaded": True} if loaded else {}),
    }
    LEDGER.write_text("".join(json.dumps(r) + "\n" for _, r in sorted(ledger.items())))


def row_metrics(run: Path) -> dict:
    """What a row shows of one finished run: the best policy's test metrics and monitors, the last Grow step's
    METEOR similarity among a source's samples, the wall time."""
    record = json.loads((run / "run.json").read_text())
    best = record["best_policy"]
    test = record["test"][best]
    metrics = json.loads((run / best / "metrics.json").read_text())
    monitors = metrics.get("monitors") or {}
    grows = sorted(
        (p for p in run.glob("grow-*") if (p / "_manifest.json").is_file()), key=lambda p: int(p.name.split("-")[1])
    )
    within = json.loads((grows[-1] / "_manifest.json").read_text())["stats"].get("meteor_within") if grows else None
    outputs = pd.read_parquet(run / best / "valid_outputs.parquet")
    wall = run / "wall_seconds.txt"
    return {
        "best": best,
        "em": test["exact_match"],
        "chrf": test["chrf"],
        "bleu": test["bleu"],
        "tokens": test["completion_tokens"],
        "p0_tokens": record["test"]["policy-0"]["completion_tokens"],
        "length_ratio": round(float(outputs["output"].str.len().mean() / outputs["reference"].str.len().mean()), 4),
        "drift_chrf": monitors.get("drift_chrf"),
        "drift_meteor": monitors.get("drift_meteor"),
        "within": within,
        "seconds": float(wall.read_text()) if wall.is_file() else None,
    }


def _mean(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.1f}" if values else "n/a"


def table(task: str, seeds: tuple[int, ...] = SEEDS) -> str:
    head = (
        "| method | seeds | test exact match | test chrF | test BLEU | output tokens (policy-0) | output / reference "
        "chars | drift: chrF, METEOR to policy-0 | METEOR among a source's samples | wall time per seed | best policy "
        "| "
        "command (seed 0) |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    ledger = read_ledger()
    for name, config, overrides, _ in METHODS:
        ms = [ledger[(task, name, s)] for s in seeds if (task, name, s) in ledger]
        cmd = shown(commands(task, name, config, overrides, seeds[0]))
        if not ms:
            lines.append(f"| {name} | not run yet | | | | | | | | | | `{cmd}` |")
            continue
        seeds_run = ", ".join(str(m["seed"]) for m in ms)
        em = " / ".join(f"{m['em']:.1f}" for m in ms)
        ratio = statistics.mean(m["length_ratio"] for m in ms)
        drift = (
            f"{_mean([m['drift_chrf'] for m in ms])}, "
            f"{statistics.mean(m['drift_meteor'] for m in ms if m['drift_meteor'] is not None):.3f}"
            if any(m["drift_meteor"] is not None for m in ms)
            else "n/a"
        )
        within = [m["within"] for m in ms if m["within"] is not None]
        secs = " / ".join(
            "shared" if m.get("loaded") else "n/a" if m["seconds"] is None else f"{m['seconds']:.0f}" for m in ms
        )
        lines.append(
            f"| {name} | {seeds_run} | {em} | {_mean([m['chrf'] for m in ms])} | {_mean([m['bleu'] for m in ms])} "
            f"| {statistics.mean(m['tokens'] for m in ms):.2f} ({statistics.mean(m['p0_tokens'] for m in ms):.2f}) "
            f"| {ratio:.3f} | {drift} | {f'{statistics.mean(within):.3f}' if within else 'n/a'} "
            f"| {secs} s | {' / '.join(m['best'] for m in ms)} | `{cmd}` |"
        )
    return "\n".join(lines)


def write_doc(tasks: list[str]) -> None:
    body = "\n\n".join(f"### {task}\n\n{table(task)}" for task in tasks)
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} ... {END} markers to put the tables between")
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{body}\n{END}", text, flags=re.S)
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only write the tables, from bench/methods.jsonl")
    parser.add_argument(
        "--record",
        action="store_true",
        help="put the finished runs under runs/methods into bench/methods.jsonl (no new runs), then the tables",
    )
    parser.add_argument(
        "--loaded",
        action="store_true",
        help="with --record: the runs shared the machine with other work (their wall time is not shown)",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds to run")
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated rows to run (default all): {', '.join(m[0] for m in METHODS)}"
    )
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if args.record:  # runs made elsewhere (another checkout, by hand): their lines, from the directories
        for task, name, config, overrides, seed in rows(tasks, [int(s) for s in args.seeds.split(",")]):
            if finished(run_dir(task, name, seed)):
                record(task, name, seed, config, overrides, loaded=args.loaded)
    elif not args.table:
        only = args.methods.split(",") if args.methods else None
        unknown = sorted(set(only or []) - {m[0] for m in METHODS})
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(m[0] for m in METHODS)}")
        run_missing(tasks, [int(s) for s in args.seeds.split(",")], only)
    write_doc(list(TASKS))
    for task in TASKS:
        print(f"\n{task}\n{table(task)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
