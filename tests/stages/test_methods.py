"""The methods of docs/methods.md, each from its config in configs/, run end to end on the smoke scale: the same
config with 40 g2p words, a few steps, through the real CLI and Prefect."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import rest

pytestmark = pytest.mark.integration

# The smoke scale of a g2p config: what changes is size, never the method.
SMOKE = [
    "data.pool=tests/fixtures/g2p-pool-small.parquet",
    "data.valid=tests/fixtures/g2p-valid-small.parquet",
    "data.test=tests/fixtures/g2p-valid-small.parquet",
    "bc.steps=60",
    "grow.shard_size=20",
    "improve.steps=6",
    "improve.batch_size=16",
]


def _metrics(run, name):
    return json.loads((run / name / "metrics.json").read_text())


def test_iterative_dpo_learns_from_pairs_of_its_own_samples(tmp_path):
    run = tmp_path / "dpo"
    # 60 BC steps learn little of g2p (chrF ~0.1): low thresholds, so that pairs qualify
    out = rest(
        "run",
        "--config",
        "configs/g2p-dpo.yaml",
        "--run",
        str(run),
        *SMOKE,
        "grow.steps=1",
        "improve.thresholds=[0.1, 0.15]",
        "improve.preference.margin=0.05",
    ).stdout
    rows = pd.read_parquet(run / "grow-1")
    for name, tau in (("improve-1-1", 0.1), ("improve-1-2", 0.15)):
        m = _metrics(run, name)
        sel, train = m["improve"], m["train"]
        # one pair per source at most (best_worst), each chosen sample clears tau
        assert 0 < sel["pairs"] == sel["pair_sources"] <= rows["source_id"].nunique()
        assert sel["chosen_reward_mean"] >= tau > sel["rejected_reward_mean"]
        assert 0 <= train["pref_accuracy_last"] <= 1 and train["nll_last"] > 0
    inspect = rest("inspect", str(run)).stdout
    assert "0.1:" in inspect and " pairs" in inspect
    assert "best policy" in out.lower()


def test_superhf_iterations_take_fresh_superbatches_and_keep_the_best_per_source(tmp_path):
    run = tmp_path / "superhf"
    rest(
        "run",
        "--config",
        "configs/superhf-g2p.yaml",
        "--run",
        str(run),
        *SMOKE,
        "grow.steps=3",
        "grow.sources_per_step=16",
        "grow.shard_size=16",
        "improve.steps=4",
    )
    seen: set[str] = set()
    for g in (1, 2, 3):
        rows = pd.read_parquet(run / f"grow-{g}")
        ids = set(rows["source_id"])
        assert len(ids) == 16 and len(rows) == 16 * 8
        if g < 3:  # 40 sources: steps 1 and 2 take 32 distinct ones of the first pass
            assert not ids & seen
        seen |= ids
        m = _metrics(run, f"improve-{g}-1")
        assert m["improve"]["kept_unique"] == m["improve"]["kept_sources"] == 16  # the best sample of each source
        assert m["train"]["kl_last"] > 0  # the KL prior to policy-0 is on
        grow = json.loads((run / f"grow-{g}" / "_manifest.json").read_text())["stats"]
        assert 0 <= grow["meteor_within"] <= 1
        # eval.every 5: only the last iteration (3) is validated; the others publish no validation
        validated = g == 3
        assert (m["valid"] is not None) == validated == (run / f"improve-{g}-1" / "valid_outputs.parquet").exists()
    assert 0 <= m["monitors"]["drift_meteor"] <= 1
    assert m["monitors"]["alarm"]["previous"] == "policy-0"  # compared with the last validated policy
    record = json.loads((run / "run.json").read_text())
    assert record["best_policy"] in ("policy-0", "improve-3-1")
    # the report's verdict spans the Grow steps since the last validated policy
    [verdict] = json.loads(rest("report", str(run), "--json").stdout)["grow"]
    assert (verdict["grow"], verdict["before"], verdict["after"], verdict["samples"]) == (
        "grow-1..3",
        "policy-0",
        "improve-3-1",
        3 * 16 * 8,
    )


def _g2p(run, *overrides):
    """configs/g2p.yaml at the smoke scale: BC 60 steps, no early stopping and no control."""
    opts = ["bc.valid_every=null", "eval.control=false", "tracking.comet=off"]
    rest("run", "--config", "configs/g2p.yaml", "--run", str(run), *SMOKE, *opts, *overrides)
