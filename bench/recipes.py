"""The recipe study of docs/methods.md ("A default recipe that beats its control"): candidate recipes, each one
set of overrides on configs/numbers.yaml, run on every text task with only the data paths changed, 2 seeds, at
equal optimiser steps with the BC control of the same total.

    .venv/bin/python bench/recipes.py --tasks g2p --seeds 0 --rows default,mix50   # runs what is missing
    .venv/bin/python bench/recipes.py --table                                      # the table from the ledger

Runs go to runs/recipes/<task>-<row>-s<seed> (with a log); every finished run is a line of bench/recipes.jsonl
(test exact match of the best policy by validation, of policy-0, the command, the commit), the table is made from
that file, so it survives the run directories.

The es-* candidates change nothing before Grow, so a candidate starts from the policy-0 (and the BC control) of a
finished es* run of the same task and seed: copied, they are the artifacts the candidate would make again (same
config slice, same seed: the same bytes, tests/stages/test_pipeline.py), and the pipeline checks each one's config and
parents before it skips it; a control made for other step counts is trained again. The ledger's `reused` names
what was copied (its `seconds` are then the rest of the run only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from rest.artifacts.run_record import rebuild_run

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("runs/recipes")
LEDGER = ROOT / "bench/recipes.jsonl"
BASE = "configs/numbers.yaml"


def _data(name: str) -> list[str]:
    return [f"data.{s}=data/{name}/{s}.parquet" for s in ("train", "pool", "valid", "test")]


# A task is what a user brings: data, and where the data needs them a model and a reward (arith: a decoder with a
# chat template, answers checked by the `math` verifier). The recipe (the row) is the same on every task.
ARITH = [
    "model.architecture=configs/models/qwen2-0.8m.json",
    "model.vocab_size=192",
    "model.chat_template=configs/templates/chatml.jinja",
    "model.max_source_tokens=64",
    "model.max_target_tokens=64",
    "grow.max_new_tokens=64",
    "eval.max_new_tokens=64",
    "reward.components={math: 1.0}",
]
TASKS = {
    "numbers": _data("numbers"),
    "g2p": _data("g2p"),
    "words": _data("words"),
    "arith": [*_data("arith"), *ARITH],
}
# The recipe configs/numbers.yaml had before this study (BC 400 + 4 x 150 Improve at tau [0.95, 1.0]): the rows
# that start from it say so; the others override the current file.
OLD = ["bc.steps=400", "bc.valid_every=null", "improve.thresholds=[0.95,1.0]", "improve.steps=150"]
# name -> (overrides on configs/numbers.yaml, what it is).
ROWS = {
    "bc-control": ([*OLD[:2], "grow.steps=0", "bc.steps=1000"], "behaviour cloning only, 1000 steps"),
    "default": (OLD, "the recipe before: BC 400, 2 x Grow (N 8, T 1), tau [0.95, 1.0], Improve 4 x 150, mix 0.25"),
    "mix50": ([*OLD, "improve.train_mix=0.5"], "the recipe before, half of every Improve batch labelled"),
    "bc60": ([*OLD, "bc.steps=600", "improve.steps=100"], "BC 600 + Improve 4 x 100"),
    "bc60-mix50": (
        [*OLD, "bc.steps=600", "improve.steps=100", "improve.train_mix=0.5"],
        "BC 600 + Improve 4 x 100, half labelled",
    ),
    "bc-control-1800": (["bc.valid_every=null", "grow.steps=0", "bc.steps=1800"], "behaviour cloning only, 1800 steps"),
    "long": (
        ["bc.valid_every=null", "bc.steps=1000", "improve.steps=400"],
        "1800 steps: BC 1000, then per Grow step one Improve step of 400 at tau 1.0",
    ),
    "long-mix50": (
        ["bc.valid_every=null", "bc.steps=1000", "improve.steps=400", "improve.train_mix=0.5"],
        "1800 steps: BC 1000, then per Grow step one Improve step of 400 at tau 1.0, half labelled",
    ),
    "es": (
        [],
        "**the default now** (configs/numbers.yaml): BC with early stopping (validate every 100 steps, patience 2, "
        "at most 2000), then per Grow step one Improve step of 300 at tau 1.0, mix 0.25",
    ),
    # Candidates on top of es, one change each.
    "es-t07": (["grow.temperature=0.7"], "es, Grow samples at temperature 0.7"),
    "es-mix0": (["improve.train_mix=0.0"], "es, no labelled rows in Improve batches (ReST-EM mixes none)"),
    "es-restart": (["improve.init=policy-0"], "es, every Improve step fine-tunes policy-0 again (ReST-EM)"),
    "es-pct": (
        ["improve.thresholds=[0.8]", "improve.selection=percentile", "improve.percentile=0.75"],
        "es, tau from the reward distribution: a sample at chrF >= 0.8 in its source's top quarter",
    ),
    # es-acc (improve.accumulate) and es-hard (grow.hard_samples) were studied here too (docs/methods.md); neither
    # beat es, and both options were removed (docs/results.md, "Options removed").
}


def run_dir(task: str, row: str, seed: int) -> Path:
    return OUT / f"{task}-{row}-s{seed}"


def command(task: str, row: str, seed: int) -> list[str]:
    return [
        "rest",
        "run",
        "--config",
        BASE,
        "--run",
        str(run_dir(task, row, seed)),
        f"seed={seed}",
        *TASKS[task],
        *ROWS[row][0],
        "tracking.comet=off",
        *([] if row.startswith("bc-control") else ["eval.control=true"]),  # the BC control in the run
    ]


def finished(run: Path) -> bool:
    record = run / "run.json"
    return record.is_file() and bool(json.loads(record.read_text()).get("test"))


def read_ledger() -> dict[tuple[str, str, int], dict]:
    if not LEDGER.is_file():
        return {}
    rows = [json.loads(line) for line in LEDGER.read_text().splitlines() if line.strip()]
    return {(r["task"], r["row"], r["seed"]): r for r in rows}


def record(task: str, row: str, seed: int, seconds: float, reused: list[str] | None = None) -> None:
    run = run_dir(task, row, seed)
    rec = json.loads((run / "run.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    ledger = read_ledger()
    total = sum(
        json.loads((run / name / "metrics.json").read_text())["train"]["steps"]
        for name in [a["name"] for a in rec["artifacts"] if a["name"] == "policy-0" or a["name"].startswith("improve-")]
    )
    control = rec.get("control") or {}
    # What the control counted: exact match, or a verifier's accuracy (arith) where the reference is one worked
    # solution of many and exact match would undercount.
    metric = control.get("metric", "exact_match")
    score = control["rest"] if metric == "reward" else rec["test"][rec["best_policy"]]["exact_match"]
    ledger[(task, row, seed)] = {
        "task": task,
        "row": row,
        "seed": seed,
        "steps": total,
        "control_em": control.get("bc"),
        "lead": control.get("lead"),
        "noise": control.get("noise"),
        "best": rec["best_policy"],
        "metric": metric,
        "em": score,
        "chrf": rec["test"][rec["best_policy"]]["chrf"],
        "p0_em": rec["test"]["policy-0"]["exact_match"],
        "command": " ".join(command(task, row, seed)),
        "commit": commit.stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(seconds),
        **({"reused": reused} if reused else {}),
    }
    LEDGER.write_text("".join(json.dumps(r) + "\n" for _, r in sorted(ledger.items())))


REUSABLE = ("policy-0", "control")  # what the es-* candidates share with es: BC, and the control of equal steps


def reuse(task: str, row: str, seed: int) -> list[str]:
    """Copy policy-0 and the control of a finished es* run of the task and seed into a new es-* candidate's run
    directory (module docstring). Returns the names copied."""
    run = run_dir(task, row, seed)
    if not row.startswith("es-") or run.exists():
        return []
    donors = sorted(p for p in OUT.glob(f"{task}-es*-s{seed}") if p.name != run.name and finished(p))
    if not donors:
        return []
    copied = [name for name in REUSABLE if (donors[0] / name / "_manifest.json").is_file()]
    for name in copied:
        shutil.copytree(donors[0] / name, run / name)
    rebuild_run(run)
    print(f"  reusing {', '.join(copied)} of {donors[0]}", flush=True)
    return copied


def run_row(task: str, row: str, seed: int) -> None:
    run = run_dir(task, row, seed)
    cmd = command(task, row, seed)
    print("+", " ".join(cmd), flush=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    reused = reuse(task, row, seed)
    t0 = time.time()
    with open(f"{run}.log", "w") as log:
        subprocess.run([str(ROOT / ".venv/bin" / cmd[0]), *cmd[1:]], check=True, stdout=log, stderr=log, cwd=ROOT)
    print(f"  {time.time() - t0:.0f} s", flush=True)
    record(task, row, seed, time.time() - t0, reused)


def lead(ledger: dict, task: str, row: str, seed: int) -> str:
    """ReST's test exact match minus its BC control's at the same total steps: the run's own control
    (eval.control) when it has one, else the bc-control row of that many steps."""
    r = ledger.get((task, row, seed))
    if r is None or row.startswith("bc-control"):
        return "-"
    if r.get("lead") is not None:
        return f"{r['lead']:+.1f}"
    bc = next(
        (
            b
            for (t, n, s), b in ledger.items()
            if t == task and s == seed and n.startswith("bc-control") and b.get("steps") == r.get("steps")
        ),
        None,
    )
    return "-" if bc is None else f"{r['em'] - bc['em']:+.1f}"


def table() -> str:
    ledger = read_ledger()
    tasks = [t for t in TASKS if any(k[0] == t for k in ledger)]
    verified = {k[0] for k, r in ledger.items() if r.get("metric") == "reward"}  # scored by a verifier's accuracy
    what = {t: "accuracy" if t in verified else "EM" for t in tasks}
    head = "| recipe | steps | " + " | ".join(f"{t}: test {what[t]} (seeds 0 / 1) | {t}: ReST - BC" for t in tasks)
    head += " | ReST - BC: smallest / mean (of n) | what it is |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(tasks) + "---:|---|"]
    for row, (_, what) in ROWS.items():
        cells, steps, leads = [], set(), []
        for t in tasks:
            ems = [ledger.get((t, row, s), {}).get("em") for s in (0, 1)]
            steps |= {ledger[(t, row, s)]["steps"] for s in (0, 1) if (t, row, s) in ledger}
            cells.append(" / ".join("-" if e is None else f"{e:.1f}" for e in ems))
            seeds = [lead(ledger, t, row, s) for s in (0, 1)]
            cells.append(" / ".join(seeds))
            leads += [float(x) for x in seeds if x != "-"]
        # the default is the row whose smallest lead is largest: +5 on every task and seed is what it must keep
        summary = f"{min(leads):+.1f} / {sum(leads) / len(leads):+.1f} ({len(leads)})" if leads else "-"
        if any(c.strip("-/ ") for c in cells):
            steps_cell = "/".join(map(str, sorted(steps)))
            lines.append(f"| {row} | {steps_cell} | " + " | ".join(cells) + f" | {summary} | {what} |")
    return "\n".join(lines)


DOC = ROOT / "docs/methods.md"
MARKS = ("<!-- recipes-table:start -->", "<!-- recipes-table:end -->")


def write_doc() -> None:
    """Put the table between the recipes-table markers of docs/methods.md."""
    text = DOC.read_text()
    start, end = text.index(MARKS[0]) + len(MARKS[0]), text.index(MARKS[1])
    DOC.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--table", action="store_true", help="only print the table from bench/recipes.jsonl")
    args = parser.parse_args()
    if not args.table:
        for seed in map(int, args.seeds.split(",")):
            for task in args.tasks.split(","):
                for row in args.rows.split(","):
                    if not finished(run_dir(task, row, seed)):
                        run_row(task, row, seed)
    print(table())
    if MARKS[0] in DOC.read_text():
        write_doc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
