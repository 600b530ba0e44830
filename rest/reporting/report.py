"""`rest report RUN`: one self-contained HTML page (RUN/report/index.html) that answers, in a minute,
"did each Grow step help, what did it cost, and is the policy gaming the reward?"

    path = write_report(Path("runs/numbers"))

Everything comes from the run directory (manifests, metrics.json, shards, valid_outputs.parquet): verdicts.py reads
it and says what it means, plots.py draws it, page.py writes the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.artifacts import manifests
from rest.errors import RestError
from rest.reporting.page import render
from rest.reporting.verdicts import collect, grow_verdicts, monitor_lines

REPORT_DIR = "report"


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
