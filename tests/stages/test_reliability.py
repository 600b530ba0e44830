"""What a new user hits when things go wrong: signals, damaged artifacts, bad models, unwritable run directories.

Each test here failed before its fix (the defects of the issue "Seams for what comes next, and a base that holds").
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CONFIG, rest

pytestmark = pytest.mark.integration


def _lock_is_free(run: Path) -> bool:
    with open(run / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _start(run: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """`rest run` on the smoke config in a process group of its own (as a terminal runs it); its output lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest.cli", "run", "--config", CONFIG, "--run", str(run), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _wait_for(proc: subprocess.Popen, done, what: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _stop_and_check(proc: subprocess.Popen, lines: list[str], sig: int, group: bool, run: Path) -> None:
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 2  # the CLI and its temporary Prefect server (at least)
    started = time.time()
    os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
    rc = proc.wait(60)
    took = time.time() - started
    assert rc == 128 + sig
    assert took < 15, f"took {took:.1f} s to stop"
    time.sleep(1)
    left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
    out = "".join(lines)
    assert out.count("[rest] stopped by") == 1 and "Traceback" not in out, out[-3000:]
    assert _lock_is_free(run)


def test_ctrl_c_to_the_group_during_grow_stops_in_seconds_and_the_same_command_resumes(clean_run, tmp_path):
    run = tmp_path / "interrupted"
    proc, lines = _start(run)
    _wait_for(proc, lambda: (run / "grow-1" / "_shard-00000.json").exists(), "the first Grow shard")
    _stop_and_check(proc, lines, signal.SIGINT, group=True, run=run)
    assert not (run / "grow-1" / "_manifest.json").exists()
    rest("run", "--config", CONFIG, "--run", str(run))  # resumes
    for name in ["policy-0", "grow-1", "improve-1-1", "improve-1-2"]:
        a = json.loads((run / name / "_manifest.json").read_text())["id"]
        b = json.loads((clean_run / name / "_manifest.json").read_text())["id"]
        assert a == b, name  # resumed = uninterrupted, byte for byte


@pytest.mark.parametrize("group", [True, False], ids=["to-the-group", "to-rest-alone"])
def test_sigterm_stops_in_seconds_with_no_process_left(tmp_path, group):
    run = tmp_path / "terminated"
    proc, lines = _start(run)
    _wait_for(proc, lambda: any("Beginning flow run" in line for line in lines), "the flow to start")
    _stop_and_check(proc, lines, signal.SIGTERM, group=group, run=run)
    assert not (run / "policy-0").exists()  # BC was training: nothing half-made looks like an artifact


# ---------------------------------------------------------------------------------------------------------------
# Damaged artifacts: every command verifies what it reads


@pytest.fixture
def copy_run(clean_run, tmp_path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(clean_run, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def _refused(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in err, err


def test_a_tampered_grow_shard_is_refused_by_improve(copy_run):
    """A shard edited after publication (a reward of 3e307 that still parses) is not trained on."""
    shard = copy_run / "grow-1" / "shard-00003.parquet"
    table = pq.read_table(shard)
    rewards = table.column("reward").to_pylist()
    rewards[0] = 3e307
    pq.write_table(
        table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(rewards, pa.float64())), shard
    )
    for name in ("improve-1-1", "improve-1-2"):
        shutil.rmtree(copy_run / name)
    proc = rest("improve", "--run", str(copy_run), check=False)
    _refused(proc, "grow-1", "shard-00003.parquet", "damaged")
    assert not (copy_run / "improve-1-1").exists()


def test_damaged_weights_are_refused_by_eval_and_grow(copy_run):
    weights = copy_run / "improve-1-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    _refused(rest("eval", "--run", str(copy_run), "--policy", "improve-1-2", check=False), "improve-1-2", "damaged")
    _refused(rest("grow", "--run", str(copy_run), check=False), "improve-1-2", "model.safetensors")
    assert not (copy_run / "grow-2").exists()


def test_an_edited_manifest_or_a_missing_metrics_file_is_reported_not_shown(copy_run):
    path = copy_run / "grow-1" / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["stats"]["reward_mean"] = 0.999
    path.write_text(json.dumps(manifest, indent=2))
    (copy_run / "improve-1-1" / "metrics.json").unlink()
    rows = {r["artifact"]: r for r in json.loads(rest("inspect", str(copy_run), "--json").stdout)}
    assert rows["grow-1"]["kind"] == "damaged" and "reward" not in rows["grow-1"]
    assert rows["improve-1-1"]["kind"] == "damaged" and "metrics.json: missing" in rows["improve-1-1"]["problem"]
    assert rows["policy-0"]["kind"] == "policy"
    table = rest("inspect", str(copy_run)).stdout
    assert "DAMAGED" in table and "0.999" not in table
    _refused(rest("report", str(copy_run), check=False), "damaged")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_run_json_gets_one_line_and_rest_run_rebuilds_it(copy_run, damage):
    """run.json is the one file nothing checksums: cut short or empty (a full disk, an interrupted copy), every
    command that reads it said a JSONDecodeError traceback. Now: one line naming it; `rest run` rebuilds it."""
    path = copy_run / "run.json"
    before = json.loads(path.read_text())
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if damage == "truncated" else "")
    words = ["run.json", "not valid JSON" if damage == "truncated" else "empty", f"rest run --run {copy_run}"]
    _refused(rest("inspect", str(copy_run), check=False), *words)
    if damage == "empty":
        return  # read by the same code as a truncated one: the other commands and the rebuild are checked there
    _refused(rest("report", str(copy_run), check=False), *words)
    _refused(rest("eval", "--run", str(copy_run), check=False), *words)
    proc = rest("run", "--run", str(copy_run))
    assert "was damaged" in proc.stderr and "rebuilt from the 4 published manifests" in proc.stderr
    after = json.loads(path.read_text())
    assert after["artifacts"] == before["artifacts"]  # same names, kinds, ids and parents, in publication order
    assert after["best_policy"] == before["best_policy"] and after["test"] == before["test"]
    assert "published, skipping" in proc.stderr  # nothing was redone
    assert rest("inspect", str(copy_run)).returncode == 0


# ---------------------------------------------------------------------------------------------------------------
# Bad models and run directories: one line, nothing written


@pytest.mark.parametrize(
    "setup, override, words",
    [
        (
            lambda d: (d / "bad.json").write_text("{not json"),
            "model.architecture={d}/bad.json",
            ["model.architecture", "not valid JSON"],
        ),
        (
            lambda d: (d / "odd.json").write_text('{"model_type": "bart", "d_model": "wide"}'),
            "model.architecture={d}/odd.json",
            ["model.architecture", "transformers cannot build"],
        ),
        (lambda d: None, "model.pretrained={d}/no-such-model", ["model.pretrained", "does not exist"]),
        (lambda d: (d / "empty").mkdir(), "model.pretrained={d}/empty", ["model.pretrained", "empty directory"]),
    ],
)
def test_a_bad_model_is_found_before_anything_is_written(tmp_path, setup, override, words):
    setup(tmp_path)
    run = tmp_path / "run"
    proc = rest("run", "--config", CONFIG, "--run", str(run), override.format(d=tmp_path), check=False)
    _refused(proc, *words)
    assert not run.exists()


def test_run_naming_a_file_gets_one_line(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    _refused(rest("run", "--config", CONFIG, "--run", str(path), check=False), str(path), "is a file")
    _refused(rest("inspect", str(path), check=False), str(path))


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MB tmpfs (root only): a full disk and a read-only file system, for real."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_and_a_read_only_one_get_one_line_and_leave_nothing_that_looks_done(small_fs):
    run = small_fs / "run"
    proc = rest("run", "--config", CONFIG, "--run", str(run), "grow.steps=0", check=False)
    _refused(proc, "No space left on device", "run the same command again")
    assert not list(run.rglob("_manifest.json"))  # policy-0 (10 MB) did not fit: nothing looks finished
    assert _lock_is_free(run)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    proc = rest("run", "--config", CONFIG, "--run", str(small_fs / "other"), check=False)
    _refused(proc, "Read-only file system", "writable")
