"""`rest inspect RUN`: one row per artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rest.artifacts.run import Run
from rest.cli.tables import control_table, format_table, inspect_rows, summarise_rows
from rest.evaluation.control import not_helping, verdict_line


def cmd_inspect(args: argparse.Namespace) -> None:
    rows = inspect_rows(Path(args.run))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = [
        "artifact",
        "kind",
        "id",
        "parent",
        "rows",
        "steps",
        "reward",
        "kept",
        "valid_exact_match",
        "valid_chrf",
        "length",
    ]
    best = Run.open(Path(args.run)).best_policy
    table, note = (rows, None) if args.all else summarise_rows(rows, best)
    print(format_table(cols, [[r.get(c) for c in cols] for r in table]))
    if note:
        print(note)
    for r in rows:
        if r["kind"] == "damaged":
            print(f"DAMAGED: {r['problem']}")
    if best:
        print(f"best policy: {best}")
    run = Run.open(Path(args.run))
    table = control_table(run)
    if table is not None:
        print("\nagainst the BC control at equal optimiser steps (validation):")
        print(table)
        for line in (verdict_line(run.record), (not_helping(run) or {}).get("line")):
            if line:
                print(line)
