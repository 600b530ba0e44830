"""run.json: a run's metadata and the ordered list of its artifacts, an index the manifests can rebuild.

It is the one file of a run directory without a checksum: `read_run` refuses an empty or unparsable one by name,
and `rebuild_run` writes it anew from the published manifests.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from rest.artifacts import manifests
from rest.artifacts.manifests import CONFIG_FILE, read_manifest, write_json_atomic
from rest.errors import RestError

RUN_RECORD = "run.json"


def publish(
    artifact: Path,
    kind: str,
    parents: list[str],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    id_extra: Any = None,
) -> dict[str, Any]:
    """manifests.publish for an artifact of a run (its parent directory), then its entry in run.json."""
    manifest = manifests.publish(artifact, kind, parents, config, extra, id_extra=id_extra)
    record_artifact(Path(artifact).parent, manifest)
    return manifest


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise RestError(
            f"{run_dir} is not a run directory (no {RUN_RECORD}); start one with `rest run --run {run_dir}`"
        )
    problem = run_record_problem(path)
    if problem:
        raise RestError(f"{path}: {problem}; `rest run --run {run_dir}` rebuilds it from the published manifests")
    return json.loads(path.read_text())


def run_record_problem(path: Path) -> str | None:
    """What is wrong with a run.json (None: nothing). It is the one file of a run directory without a checksum:
    an empty or cut-short one is what a full disk or an interrupted copy leaves."""
    try:
        record = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        size = Path(path).stat().st_size
        return (
            "empty (0 bytes)" if size == 0 else f"damaged: not valid JSON ({' '.join(str(exc).split())}, {size} bytes)"
        )
    if not isinstance(record, dict) or not isinstance(record.get("artifacts"), list):
        return "damaged: not a run record (an object with an `artifacts` list)"
    return None


def _publication_order(name: str) -> tuple[int, ...]:
    """policy-0, then grow-g and its improve-g-i: the order a run publishes its artifacts in."""
    if name == "control":  # the BC control comes after the run's own steps
        return (2**31, 0)
    parts = name.split("-")[1:]
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) if name != "policy-0" else (0, 0)


def rebuild_run(run_dir: Path) -> dict[str, Any]:
    """Write run.json anew from the published manifests (they hold every artifact's name, kind, id and parents).
    `best_policy` and the test metrics are not in them: the end of `rest run` writes those again. `created` is the
    earliest artifact's (a comet experiment keyed on it starts anew)."""
    run_dir = Path(run_dir)
    found = []
    for art in run_dir.iterdir():
        if (
            art.is_dir()
            and not art.name.startswith(".")
            and art.name.split("-")[0] in ("policy", "grow", "improve", "control")
        ):
            manifest = read_manifest(art)
            if manifest and not manifest.get("_unreadable") and manifest.get("name") == art.name:
                found.append(manifest)
    found.sort(key=lambda m: _publication_order(m["name"]))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = {
        "name": run_dir.name,
        "created": min((m.get("created", now) for m in found), default=now),
        "config": CONFIG_FILE,
        "artifacts": [{"name": m["name"], "kind": m["kind"], "id": m["id"], "parents": m["parents"]} for m in found],
        "rebuilt": now,
    }
    write_json_atomic(run_dir / RUN_RECORD, record)
    return record


def update_run(run_dir: Path, **fields: Any) -> dict[str, Any]:
    record = read_run(run_dir)
    record.update(fields)
    write_json_atomic(Path(run_dir) / RUN_RECORD, record)
    return record


def record_artifact(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Add (or replace) a published artifact's entry in run.json."""
    record = read_run(run_dir)
    entry = {"name": manifest["name"], "kind": manifest["kind"], "id": manifest["id"], "parents": manifest["parents"]}
    record["artifacts"] = [a for a in record.get("artifacts", []) if a["name"] != manifest["name"]] + [entry]
    write_json_atomic(Path(run_dir) / RUN_RECORD, record)
