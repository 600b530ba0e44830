"""Versioned artifacts: manifests, atomic publishing, verification (run.json: run_record.py; the lock: lock.py).

An artifact is a directory (`policy-0`, `grow-1`, `improve-1-2`) that exists only once its `_manifest.json`
exists. The manifest is written last, atomically (temp file + rename), and records the kind, a content-hash id,
the parent ids, the config slice that made it, the code version, the time, and every file's size, sha256 (and
rows, for Parquet). A rerun skips an artifact whose manifest verifies and redoes anything else from scratch.

Why `_manifest.json` and not `manifest.json`: `pandas.read_parquet("runs/x/grow-1")` reads every file in the
directory as Parquet except those starting with `_` or `.`; a plain `manifest.json` there makes it fail.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rest.errors import RestError

MANIFEST = "_manifest.json"
SELF_CHECKSUM = "manifest_sha256"  # sha256 of the manifest's JSON without this key
CONFIG_FILE = "config.yaml"

# Artifact kinds (the `kind` of a manifest) and how a user makes the ones that live outside a run directory.
POLICY, GROW, REWARD_MODEL = "policy", "grow", "reward_model"
HOW_TO_MAKE = {REWARD_MODEL: "train one with `rest reward train --config configs/reward-numbers.yaml`"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` so that a reader (or a crash) sees the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`rest <version>` plus the git commit of the checkout when there is one (`+dirty` with local changes)."""
    from rest import __version__

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha, dirty = "", ""
    return f"rest {__version__}" + (f"+g{sha}" if sha else "") + ("-dirty" if dirty else "")


def _file_entries(artifact: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted(artifact.rglob("*")):
        rel = path.relative_to(artifact).as_posix()
        if not path.is_file() or rel == MANIFEST or rel.startswith(".") or "/." in rel:
            continue
        entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if path.suffix == ".parquet":
            entry["rows"] = pq.ParquetFile(path).metadata.num_rows
        entries[rel] = entry
    return entries


def publish(
    artifact: Path,
    kind: str,
    parents: list[str],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    id_extra: Any = None,
) -> dict[str, Any]:
    """Write the manifest of a finished artifact directory, last and atomically (an artifact of a run is also
    recorded in its run.json: run_record.publish). `id_extra`: what else the id depends on besides the files (a
    Grow step: the code of the user's reward functions)."""
    files = _file_entries(artifact)
    # Content hash of the data files (not of times, paths, or `_`-prefixed bookkeeping such as the per-shard
    # records with their host, pid and timings), so the same inputs give the same id on a rerun.
    content = {k: v["sha256"] for k, v in files.items() if not Path(k).name.startswith("_")}
    identity = {"kind": kind, "files": content, **({"also": id_extra} if id_extra is not None else {})}
    artifact_id = sha256_json(identity)[:16]
    manifest = {
        "kind": kind,
        "name": artifact.name,
        "id": artifact_id,
        "parents": parents,
        "config": config,
        "code_version": code_version(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        **(extra or {}),
    }
    # The manifest's own checksum: its statistics and config slice are read (inspect, report, comet) as they are,
    # so an edit to them must be caught like an edit to a data file.
    manifest[SELF_CHECKSUM] = sha256_json(manifest)
    write_json_atomic(artifact / MANIFEST, manifest)
    return manifest


def read_manifest(artifact: Path) -> dict[str, Any] | None:
    """The manifest as written (None when there is none). Unverified: readers use `verified` or `require`."""
    path = Path(artifact) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"files": {}, "_unreadable": True}
    return manifest if isinstance(manifest, dict) else {"files": {}, "_unreadable": True}


def verify(artifact: Path) -> list[str]:
    """Problems with a published artifact: missing or edited manifest, missing files, wrong sizes or hashes.
    [] is good."""
    manifest = read_manifest(artifact)
    if manifest is None:
        return [f"{artifact}: no {MANIFEST}"]
    if manifest.get("_unreadable"):
        return [f"{Path(artifact) / MANIFEST}: not valid JSON"]
    body = {k: v for k, v in manifest.items() if k != SELF_CHECKSUM}
    if manifest.get(SELF_CHECKSUM) != sha256_json(body):
        return [f"{Path(artifact) / MANIFEST}: edited since it was published (its checksum differs)"]
    problems = []
    for rel, entry in manifest["files"].items():
        path = Path(artifact) / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: changed since it was published (sha256 differs)")
    return problems


VERIFIED: dict[tuple, dict[str, Any]] = {}  # (path, manifest stat) -> manifest: each artifact hashed once per process


def _check(artifact: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(manifest, []) when the artifact verifies, (None, problems) when not; hashed once per process."""
    try:
        st = (artifact / MANIFEST).stat()
    except FileNotFoundError:
        return None, [f"{artifact}: no {MANIFEST}"]
    key = (str(artifact.resolve()), st.st_mtime_ns, st.st_size)
    if key not in VERIFIED:
        problems = verify(artifact)
        if problems:
            return None, problems
        manifest = read_manifest(artifact)
        if manifest is None:  # removed between verify() and here
            return None, [f"{artifact}: no {MANIFEST}"]
        VERIFIED[key] = manifest
    return VERIFIED[key], []


def verified(artifact: Path, redo_hint: str | None = None) -> dict[str, Any]:
    """The manifest of a published artifact whose files and manifest all match their checksums, or a RestError.

    Every command verifies what it reads, once per process (a policy is hashed once, however many shards load
    it): a damaged artifact is refused with a message, never used. `redo_hint` says how to redo it.
    """
    artifact = Path(artifact)
    if not (artifact / MANIFEST).is_file():
        raise RestError(f"{artifact} is not published (no {MANIFEST}); run the step that makes it first")
    manifest, problems = _check(artifact)
    if manifest is None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        hint = redo_hint or f"delete {artifact} and the artifacts made after it, and rerun the step that made it"
        raise RestError(f"{artifact} is damaged: {problems[0]}{more}. It was not used; {hint}")
    return manifest


def require(artifact: Path, kind: str, key: str, how_to_make: str) -> dict[str, Any]:
    """The verified manifest of a finished artifact of `kind` at `artifact` (named by config key or option
    `key`), or a RestError that says what is wrong and `how_to_make` one."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None or manifest.get("kind") != kind:
        what = "does not exist" if not artifact.exists() else f"is not a finished {kind} (no {MANIFEST} of kind {kind})"
        raise RestError(f"{key}: {artifact} {what}; {how_to_make}")
    return verified(artifact, f"{how_to_make} again")


def diff_config(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += diff_config(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def existing(artifact: Path, config: dict[str, Any], parents: list[str]) -> dict[str, Any] | None:
    """The manifest of `artifact` if it is published, verifies and was made from this config and these parents.

    A directory without a manifest is a partial artifact (a crash or a kill mid-step): it is removed so the
    step is redone from scratch. A published artifact made from another config is an error, not a silent redo:
    the user may be pointing a new experiment at an old run directory.
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if manifest is None:
        return None
    manifest, problems = _check(artifact)
    if manifest is None:
        print(f"[rest] {artifact.name}: does not verify ({problems[0]}); redoing it", flush=True)
        return None
    changed = diff_config(manifest["config"], config)
    if changed:
        raise RestError(
            f"{artifact} was made with another config ({'; '.join(changed[:3])}). Use a new --run directory, "
            f"or delete {artifact} and the artifacts after it to redo them."
        )
    if manifest["parents"] != parents:
        raise RestError(
            f"{artifact} was made from other parent artifacts ({manifest['parents']} != {parents}): an earlier "
            f"artifact was redone. Delete {artifact} and the artifacts after it to redo them."
        )
    return manifest


def clear(artifact: Path) -> None:
    """Remove a partial artifact directory (and any staging copy of it)."""
    for path in (Path(artifact), staging(artifact)):
        if path.exists():
            shutil.rmtree(path)


def staging(artifact: Path) -> Path:
    """Where a directory artifact is built before it is renamed into place (hidden, so no reader picks it up)."""
    artifact = Path(artifact)
    return artifact.with_name(f".{artifact.name}.partial")
