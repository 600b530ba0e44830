"""The ablation table of docs/ablations.md: every Improve option of the embedded task, 2 seeds each.

    .venv/bin/python bench/ablations.py   # runs what is missing (~3.5 min a run on 2 CPU cores), then the table
    .venv/bin/python bench/ablations.py --table    # only the table, from the runs already there

Each row is one `rest run` command; the table prints that command, so every number can be reproduced alone.
Runs go to runs/ablations/<row>-s<seed>; a finished run is not run again (rest run resumes a partial one).

policy-0 and grow-1 do not depend on any Improve option, so every ReST row of a seed shares them: the script
copies them (manifests included) from rest-s<seed> before it calls `rest run`, which finds them published for the
same config and parents and starts at improve-1-1. The command alone recomputes them and gets the same ids
(artifact ids are content hashes; docs/ablations.md checks it for one row).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("runs/ablations")
SEEDS = (0, 1)
# name, config, overrides, what it is
ROWS = [
    ("bc-control", "configs/numbers-bc.yaml", [], "behaviour cloning only, as many optimiser steps as ReST (1800)"),
    (
        "rest",
        "configs/numbers.yaml",
        [],
        "ReST default: token-mean NLL, global threshold, fine-tune the previous policy",
    ),
    (
        "sequence-mean",
        "configs/numbers.yaml",
        ["improve.loss=sequence_mean"],
        "length-invariant (sequence-averaged) NLL",
    ),
    ("kl-0.1", "configs/numbers.yaml", ["improve.kl_beta=0.1"], "KL prior to policy-0, beta 0.1 (SuperHF)"),
    ("kl-1.0", "configs/numbers.yaml", ["improve.kl_beta=1.0"], "KL prior to policy-0, beta 1.0"),
    (
        "reward-weighted",
        "configs/numbers.yaml",
        ["improve.reward_weighted=true"],
        "each kept sample's loss times its reward",
    ),
    (
        "rest-em",
        "configs/numbers.yaml",
        ["improve.init=policy-0", "improve.max_per_source=4"],
        "ReST-EM: every Improve step restarts from policy-0, at most 4 samples per source",
    ),
    (
        "top-k",
        "configs/numbers.yaml",
        ["improve.selection=top_k", "improve.top_k=1"],
        "only the best distinct completion per source that clears tau",
    ),
]


def command(config: str, overrides: list[str], seed: int, run: Path) -> list[str]:
    return ["rest", "run", "--config", config, "--run", str(run), f"seed={seed}", *overrides]


def finished(run: Path) -> bool:
    record = run / "run.json"
    return record.is_file() and bool(json.loads(record.read_text()).get("test"))


SHARED = ("policy-0", "grow-1")


def seed_shared(run: Path, base: Path) -> None:
    """Copy policy-0 and grow-1 of `base` (a finished ReST run of the same seed) into a new run directory."""
    if run.exists() or not finished(base):
        return
    run.mkdir(parents=True)
    for name in SHARED:
        shutil.copytree(base / name, run / name)
    record = json.loads((base / "run.json").read_text())
    record = {
        "name": run.name,
        "created": record["created"],
        "config": record["config"],
        "artifacts": [a for a in record["artifacts"] if a["name"] in SHARED],
    }
    (run / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def run_missing() -> None:
    for name, config, overrides, _ in ROWS:
        for seed in SEEDS:
            run = OUT / f"{name}-s{seed}"
            if finished(run):
                continue
            if config == "configs/numbers.yaml" and name != "rest":
                seed_shared(run, OUT / f"rest-s{seed}")
            cmd = command(config, overrides, seed, run)
            print("+", " ".join(cmd), flush=True)
            t0 = time.time()
            with open(OUT / f"{name}-s{seed}.log", "w") as log:
                subprocess.run(
                    [str(ROOT / ".venv/bin" / cmd[0]), *cmd[1:]], check=True, stdout=log, stderr=subprocess.STDOUT
                )
            print(f"  {time.time() - t0:.0f} s", flush=True)


def row_metrics(run: Path) -> dict:
    record = json.loads((run / "run.json").read_text())
    best = record["best_policy"]
    test = record["test"][best]
    metrics = json.loads((run / best / "metrics.json").read_text())
    return {
        "best": best,
        "test_em": test["exact_match"],
        "test_reward": test["reward"],
        "valid_em": metrics["valid"]["exact_match"],
        "drift": metrics.get("monitors", {}).get("drift_chrf"),
        "policy0_test_em": record["test"]["policy-0"]["exact_match"],
    }


def table() -> str:
    lines = [
        "| row | policy-0 test EM (s0, s1) | best policy test EM (s0, s1) | mean test EM | mean test reward | drift "
        "chrF | best policy (s0 / s1) | command (seed 0) |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for name, config, overrides, _ in ROWS:
        runs = [OUT / f"{name}-s{seed}" for seed in SEEDS]
        if not all(finished(r) for r in runs):
            lines.append(f"| {name} | (not run) | | | | | | |")
            continue
        ms = [row_metrics(r) for r in runs]
        drift = [m["drift"] for m in ms if m["drift"] is not None]
        cmd = " ".join(command(config, overrides, SEEDS[0], runs[0]))
        p0 = ", ".join(f"{m['policy0_test_em']:.1f}" for m in ms)
        best = ", ".join(f"{m['test_em']:.1f}" for m in ms)
        lines.append(
            f"| {name} | {p0} | {best} "
            f"| {statistics.mean(m['test_em'] for m in ms):.1f} | {statistics.mean(m['test_reward'] for m in ms):.4f} "
            f"| {f'{statistics.mean(drift):.1f}' if drift else 'n/a'} | {' / '.join(m['best'] for m in ms)} | `{cmd}` |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only print the table of the runs already there")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run_missing()
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
