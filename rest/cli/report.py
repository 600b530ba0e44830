"""`rest report RUN`: RUN/report/index.html."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rest.artifacts.run import Run


def cmd_report(args: argparse.Namespace) -> None:
    from rest.reporting.report import report_summary, write_report

    run_dir = Path(args.run)
    Run.open(run_dir)  # a RestError when it is not a run directory
    path = write_report(run_dir)
    if args.json:
        print(json.dumps({"report": str(path), **report_summary(run_dir)}, indent=2))
    else:
        print(path)
