"""The whole pipeline, small: configs/smoke.yaml through the real CLI, Prefect (ephemeral), Parquet and sacrebleu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sacrebleu import sentence_chrf

from rest.artifacts.manifests import verify
from tests.conftest import CONFIG, rest

pytestmark = pytest.mark.integration
SCHEMA = {
    "source_id": "string",
    "source": "string",
    "reference": "string",
    "sample_index": "int32",
    "completion": "string",
    "num_tokens": "int32",
    "logprob": "double",
    "reward": "double",
    "reward_chrf": "double",
    "reward_exact_match": "double",
    "policy": "string",
    "grow_step": "int32",
}


def test_run_layout_and_lineage(clean_run):
    record = json.loads((clean_run / "run.json").read_text())
    names = [a["name"] for a in record["artifacts"]]
    assert names == ["policy-0", "grow-1", "improve-1-1", "improve-1-2"]
    assert (clean_run / "config.yaml").is_file()
    ids = {a["name"]: a["id"] for a in record["artifacts"]}
    for name in names:
        assert verify(clean_run / name) == [], name
    grow = json.loads((clean_run / "grow-1" / "_manifest.json").read_text())
    assert grow["parents"] == [ids["policy-0"]]
    assert grow["config"]["grow"]["num_samples"] == 8 and grow["code_version"].startswith("rest ")
    assert sum(f["rows"] for n, f in grow["files"].items() if n.endswith(".parquet")) == 8 * 40
    assert {s["host"] for s in grow["shards"]} and all(s["pid"] > 0 for s in grow["shards"])
    imp2 = json.loads((clean_run / "improve-1-2" / "_manifest.json").read_text())
    assert imp2["parents"] == [ids["improve-1-1"], ids["grow-1"]]
    assert imp2["config"]["improve"]["tau"] == 0.45
    assert record["best_policy"] in names
    assert set(record["test"]) >= {"policy-0", record["best_policy"]}
    for name in ["policy-0", "improve-1-1", "improve-1-2"]:
        metrics = json.loads((clean_run / name / "metrics.json").read_text())
        assert set(metrics["valid"]) >= {"exact_match", "chrf", "bleu", "reward"}
        assert (clean_run / name / "model.safetensors").is_file()


def test_shards_schema_and_rewards(clean_run):
    df = pd.read_parquet(clean_run / "grow-1")
    pool = pd.read_parquet("tests/fixtures/pool-small.parquet")
    assert len(df) == 8 * len(pool)
    assert not df.duplicated(["source_id", "sample_index"]).any()
    assert set(df.source_id) == set(pool.source_id)
    schema = pq.read_schema(sorted((clean_run / "grow-1").glob("shard-*.parquet"))[0])
    assert {f.name: str(f.type) for f in schema} == SCHEMA
    want = [sentence_chrf(c, [r]).score / 100 for c, r in zip(df.completion, df.reference)]
    assert df.reward_chrf.tolist() == pytest.approx(want, abs=1e-12)
    assert df.reward.tolist() == pytest.approx((0.75 * df.reward_chrf + 0.25 * df.reward_exact_match).tolist())
    assert df.reward.between(0, 1).all() and (df.logprob <= 0).all()
    assert (df.grow_step == 1).all()
    policy0 = json.loads((clean_run / "policy-0" / "_manifest.json").read_text())["id"]
    assert (df.policy == policy0).all()


def test_cli_prints_metrics_and_inspect_table(clean_run):
    out = (clean_run / "stdout.txt").read_text()
    for name in ["policy-0", "improve-1-1", "improve-1-2"]:
        assert name in out
    assert "exact_match" in out and "chrF" in out and "reward" in out
    table = rest("inspect", str(clean_run)).stdout
    assert table.splitlines()[0].split()[:4] == ["artifact", "kind", "id", "parent"]
    rows = json.loads(rest("inspect", str(clean_run), "--json").stdout)
    grow = next(r for r in rows if r["artifact"] == "grow-1")
    assert grow["rows"] == 320 and grow["parent"] == "policy-0"
    evaluated = json.loads(
        rest(
            "eval", "--run", str(clean_run), "--policy", "policy-0", "--data", "tests/fixtures/valid-small.parquet"
        ).stdout
    )
    metrics = json.loads((clean_run / "policy-0" / "metrics.json").read_text())["valid"]
    assert evaluated["exact_match"] == metrics["exact_match"] and evaluated["chrf"] == metrics["chrf"]


def test_rerun_skips_published_artifacts(clean_run):
    # report/ and comet/ are rewritten at the end of every run from the artifacts; the artifacts are not touched
    def files():
        return {
            p: p.stat().st_mtime_ns
            for p in clean_run.rglob("*")
            if p.is_file() and p.parent != clean_run and p.relative_to(clean_run).parts[0] not in ("report", "comet")
        }

    before = files()
    rest("run", "--config", CONFIG, "--run", str(clean_run))
    assert files() == before  # nothing inside any artifact was rewritten


def test_another_config_on_the_same_run_is_refused(clean_run):
    proc = rest("run", "--config", CONFIG, "--run", str(clean_run), "grow.temperature=0.5", check=False)
    assert proc.returncode == 2
    assert "grow.temperature: 1.0 -> 0.5" in proc.stderr


def test_kill_during_grow_then_resume_gives_the_same_rows(clean_run, tmp_path):
    run = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest.cli", "run", "--config", CONFIG, "--run", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    grow = run / "grow-1"
    deadline = time.time() + 300
    try:
        while not (grow / "_shard-00000.json").exists():
            assert proc.poll() is None, "the run ended before Grow started"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its temporary Prefect server
        proc.wait()
    assert not (grow / "_manifest.json").exists()  # a killed step is never published
    assert len(list(grow.glob("shard-*.parquet"))) < 8
    rest("run", "--config", CONFIG, "--run", str(run))
    assert verify(grow) == []
    key = ["source_id", "sample_index"]
    resumed = pd.read_parquet(grow).sort_values(key).reset_index(drop=True)
    clean = pd.read_parquet(clean_run / "grow-1").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, clean)
    # same config and seed, same machine: the same artifacts byte for byte, whether a stage found its policy in
    # memory (the clean run: rest.models.resident) or loaded it (the resumed run: policy-0 from disk)
    for name in ["policy-0", "grow-1", "improve-1-1", "improve-1-2"]:
        a = json.loads((run / name / "_manifest.json").read_text())["id"]
        b = json.loads((clean_run / name / "_manifest.json").read_text())["id"]
        assert a == b, name


def test_improve_objectives_and_a_composite_reward_end_to_end(tmp_path):
    """Every option at once on the smoke config: they wire through Grow, Improve and the metrics."""
    run = tmp_path / "options"
    rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        "improve.loss=sequence_mean",
        "improve.kl_beta=0.1",
        "improve.reward_weighted=true",
        "improve.selection=top_k",
        "improve.top_k=2",
        "improve.max_per_source=1",
        "reward.length_penalty=0.2",
        "reward.format_regex='[a-zäöüß]+'",
        "improve.thresholds=[0.1, 0.2]",
    )
    rows = pd.read_parquet(run / "grow-1")
    assert {"reward_chrf", "reward_exact_match", "reward_length", "reward_format"} <= set(rows.columns)
    assert (rows.loc[rows.reward_format == 0, "reward"] == 0).all()
    assert ((rows.reward_format == 0) == ~rows.completion.str.fullmatch("[a-zäöüß]+")).all()
    for name in ("improve-1-1", "improve-1-2"):
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["train"]["kl_last"] > 0
        assert metrics["improve"]["kept_unique"] <= metrics["improve"]["kept_sources"]  # at most 1 per source
