import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from rest.artifacts import manifests, run_record
from rest.artifacts.lock import run_lock
from rest.artifacts.shards import write_shard
from rest.errors import RestError


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"name": "t", "artifacts": []}))
    return tmp_path


def _grow_like(run_dir, rows=3):
    art = run_dir / "grow-1"
    art.mkdir()
    cols = {
        "source_id": [f"s{i}" for i in range(rows)],
        "source": ["1"] * rows,
        "reference": ["eins"] * rows,
        "sample_index": [0] * rows,
        "completion": ["eins"] * rows,
        "num_tokens": [1] * rows,
        "logprob": [-0.1] * rows,
        "reward": [1.0] * rows,
        "reward_chrf": [1.0] * rows,
        "policy": ["p"] * rows,
        "grow_step": [1] * rows,
    }
    write_shard(art / "shard-00000.parquet", cols, ["chrf"])
    return art


def test_publish_records_rows_sha_and_run_json(run_dir):
    art = _grow_like(run_dir)
    m = run_record.publish(art, "grow", ["abc"], {"grow": {"num_samples": 1}})
    entry = m["files"]["shard-00000.parquet"]
    assert entry["rows"] == 3
    assert entry["sha256"] == manifests.sha256_file(art / "shard-00000.parquet")
    assert m["parents"] == ["abc"] and m["kind"] == "grow" and m["code_version"].startswith("rest ")
    assert json.loads((run_dir / "run.json").read_text())["artifacts"][0]["id"] == m["id"]
    assert manifests.verify(art) == []
    # pandas reads the step directory whole, manifest and all: the manifest name starts with "_".
    assert len(pd.read_parquet(art)) == 3


def test_id_is_a_content_hash(run_dir, tmp_path_factory):
    a = run_record.publish(_grow_like(run_dir), "grow", [], {})
    other = tmp_path_factory.mktemp("other")
    (other / "run.json").write_text(json.dumps({"artifacts": []}))
    b = run_record.publish(_grow_like(other), "grow", [], {})
    assert a["id"] == b["id"]  # same bytes, different directory and time: same id
    c = run_record.publish(_rewrite(other, 4), "grow", [], {})
    assert c["id"] != a["id"]


def _rewrite(run_dir, rows):
    import shutil

    shutil.rmtree(run_dir / "grow-1")
    return _grow_like(run_dir, rows)


def test_verify_catches_a_changed_file(run_dir):
    art = _grow_like(run_dir)
    run_record.publish(art, "grow", [], {})
    with open(art / "shard-00000.parquet", "ab") as f:
        f.write(b"x")
    assert "changed since it was published" in manifests.verify(art)[0]
    assert manifests.existing(art, {}, []) is None  # does not verify -> redo


def test_existing_refuses_another_config(run_dir):
    art = _grow_like(run_dir)
    run_record.publish(art, "grow", ["p"], {"grow": {"temperature": 1.0}})
    assert manifests.existing(art, {"grow": {"temperature": 1.0}}, ["p"])["kind"] == "grow"
    with pytest.raises(RestError, match=r"another config \(grow.temperature: 1.0 -> 0.7\)"):
        manifests.existing(art, {"grow": {"temperature": 0.7}}, ["p"])
    with pytest.raises(RestError, match="other parent artifacts"):
        manifests.existing(art, {"grow": {"temperature": 1.0}}, ["q"])


def test_a_directory_without_manifest_is_not_an_artifact(run_dir):
    art = _grow_like(run_dir)
    assert manifests.existing(art, {}, []) is None
    assert manifests.verify(art) == [f"{art}: no _manifest.json"]


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    manifests.write_atomic(target, b"old")

    def boom(src, dst):
        raise KeyboardInterrupt  # a kill between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        manifests.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    # the temp file is hidden (dot-prefixed): neither pandas nor a manifest counts it
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != target)


def test_bookkeeping_files_are_verified_but_not_part_of_the_id(run_dir, tmp_path_factory):
    art = _grow_like(run_dir)
    (art / "_shard-00000.json").write_text('{"pid": 1}')
    a = run_record.publish(art, "grow", [], {})
    assert "_shard-00000.json" in a["files"]
    (art / "_shard-00000.json").write_text('{"pid": 2}')
    assert manifests.verify(art)  # a changed record is caught ...
    b = run_record.publish(art, "grow", [], {})
    assert b["id"] == a["id"]  # ... but who wrote a shard, and when, does not change what the step holds


def _lock_from_another_process(run_dir) -> subprocess.CompletedProcess:
    code = "import sys; from rest.artifacts.lock import run_lock\nwith run_lock(sys.argv[1]): pass"
    return subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=60)


def test_run_lock_is_exclusive_and_released(tmp_path):
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # re-entrant in the holder: `rest run` holds it, its flows take it again
            pass
        proc = _lock_from_another_process(tmp_path)
        assert proc.returncode != 0
        assert f"{tmp_path} is in use by pid {os.getpid()}" in proc.stderr
    assert _lock_from_another_process(tmp_path).returncode == 0  # released on exit (and by the kernel on kill -9)
