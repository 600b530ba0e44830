"""ReST against its BC control (eval.control): the control is plain BC of the run's total optimiser steps, added to
a finished run without changing any of its ids; the verdict on test; the "ReST is not helping" monitor, fired by a
run built to gain nothing; what Grow found (pass@N against greedy)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from rest.artifacts.run import Run
from rest.evaluation.control import (
    control_metric,
    grow_coverage,
    monitor_fires,
    not_helping,
    paired,
    policy_steps,
    row_scores,
    step_rows,
    verdict_line,
)
from tests.conftest import CONFIG, rest


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_paired_difference_and_its_standard_error():
    a, b = np.array([1, 1, 1, 0, 1, 0, 1, 1.0]), np.array([1, 0, 1, 0, 0, 0, 1, 1.0])
    lead, se = paired(a, b)
    d = a - b
    assert lead == pytest.approx(25.0)
    assert se == pytest.approx(100 * d.std(ddof=1) / np.sqrt(8), abs=0.01)
    assert paired(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal"):
        paired(a, b[:3])


def test_verdict_line_says_beat_only_beyond_noise():
    entry = {"words": "exact match", "steps": 1000, "control_steps": 1000, "policy": "improve-2-2", "n": 500}
    won = verdict_line({"control": {**entry, "rest": 98.8, "bc": 88.6, "lead": 10.2, "noise": 3.1}})
    assert won.startswith("ReST +10.2 test exact match over BC at 1000 steps (improve-2-2 98.8 vs the BC control 88.6")
    close = verdict_line({"control": {**entry, "rest": 40.0, "bc": 39.0, "lead": 1.0, "noise": 3.0}})
    assert close.startswith("ReST did not beat BC: +1.0 test exact match at 1000 steps (noise 3.0)")
    assert verdict_line({"control": None}) is None and verdict_line({}) is None


def test_verifier_rewards_are_compared_by_accuracy():
    outputs = pd.DataFrame({"output": ["#### 4", "4"], "reference": ["2+2 #### 4", "4 "], "reward": [1.0, 0.0]})
    from rest.config import load_config

    math = load_config("configs/arith.yaml")
    assert control_metric(math)[0] == "reward" and list(row_scores(outputs, "reward")) == [1.0, 0.0]
    assert control_metric(load_config(CONFIG))[0] == "exact_match"
    assert list(row_scores(outputs, "exact_match")) == [0.0, 1.0]  # outer whitespace stripped, as exact_match


def test_arith_rest_is_the_default_recipe_with_only_the_task_changed():
    """configs/arith-rest.yaml is what the recipe study ran on arith: configs/numbers.yaml with arith's data, model
    and reward (bench/recipes.py), so "one recipe, data paths changed" stays true when either file changes."""
    import importlib.util

    from rest.config import load_config

    spec = importlib.util.spec_from_file_location("recipes", "bench/recipes.py")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    studied = load_config("configs/numbers.yaml", recipes.TASKS["arith"])
    shipped = load_config("configs/arith-rest.yaml")
    assert shipped.model_dump() == studied.model_dump()
    assert control_metric(shipped)[0] == "reward" and shipped.eval.control


@pytest.mark.integration
def test_control_added_to_a_finished_run_is_plain_bc_and_changes_no_id(clean_run, tmp_path):
    run_dir = tmp_path / "smoke"
    shutil.copytree(clean_run, run_dir)
    before = {a["name"]: a["id"] for a in json.loads((run_dir / "run.json").read_text())["artifacts"]}
    proc = rest("run", "--run", str(run_dir), "eval.control=true")
    record = json.loads((run_dir / "run.json").read_text())
    after = {a["name"]: a["id"] for a in record["artifacts"]}
    assert {k: v for k, v in after.items() if k != "control"} == before  # nothing of the run was redone
    run = Run.open(run_dir)
    steps = policy_steps(run)
    assert steps == {"policy-0": 60, "improve-1-1": 70, "improve-1-2": 80}  # configs/smoke.yaml: 60 + 2 x 10
    metrics = run.metrics("control")
    assert metrics["total_steps"] == 80 and [c["steps"] for c in metrics["curve"]] == [60, 70, 80]
    curve = pd.read_parquet(run_dir / "control" / "curve.parquet")
    assert sorted(curve["steps"].unique()) == [60, 70, 80] and len(curve) == 3 * 40
    # The control is BC alone for the same 80 steps, whatever its validations in between: the same weights as a run
    # of BC only with bc.steps 80 (when its last checkpoint is the one validation picks).
    bc = tmp_path / "bc"
    rest("run", "--config", CONFIG, "--run", str(bc), "grow.steps=0", "bc.steps=80")
    if metrics["selected_steps"] == 80:
        assert sha(run_dir / "control" / "model.safetensors") == sha(bc / "policy-0" / "model.safetensors")
    bc_valid = pd.read_parquet(bc / "policy-0" / "valid_outputs.parquet")
    last = curve[curve["steps"] == 80].reset_index(drop=True)
    assert last["output"].tolist() == bc_valid["output"].tolist()
    # The verdict: the best policy against the control on test, row by row.
    entry = record["control"]
    assert entry["steps"] == 80 and entry["policy"] == record["best_policy"] and entry["n"] == 40
    assert entry["lead"] == pytest.approx(entry["rest"] - entry["bc"], abs=0.01)
    assert entry["bc"] == pytest.approx(entry["test"]["exact_match"], abs=0.01)
    assert verdict_line(record) in proc.stdout
    rows = step_rows(run)
    assert [r["policy"] for r in rows] == ["policy-0", "improve-1-1", "improve-1-2"]
    assert "ReST against its BC control at equal optimiser steps" in proc.stdout
    inspect = rest("inspect", str(run_dir)).stdout
    assert "against the BC control" in inspect and verdict_line(record) in inspect
    page = (run_dir / "report" / "index.html").read_text()
    assert "ReST against plain behaviour cloning" in page and "What Grow found that the policy did not yet say" in page


def test_the_monitor_counts_the_lead_improve_added_not_single_steps():
    def row(policy, lead, noise, gain=None, bc_gain=None):
        r = {"policy": policy, "lead": lead, "noise": noise}
        if gain is not None:
            r.update(gain=gain, bc_gain=bc_gain, no_gain=gain - bc_gain <= noise)
        return r

    # arith seed 1: each Improve step within noise of BC's gain, together +5.4 over policy-0's lead: not fired
    rows = [row("policy-0", -0.7, 4.3), row("improve-1-1", 3.0, 3.9, 4.3, 0.7), row("improve-2-1", 4.7, 3.9, 2.0, 0.3)]
    assert monitor_fires(rows, rows[-1]) == (False, ["improve-1-1", "improve-2-1"])
    # the lead at the best policy is policy-0's (early stopping's best checkpoint against a longer schedule):
    # Improve added nothing, so the monitor fires though the lead is beyond noise
    rows = [row("policy-0", 6.0, 3.0), row("improve-1-1", 6.5, 3.0, 0.5, 0.0)]
    assert monitor_fires(rows, rows[-1]) == (True, ["improve-1-1"])
    # within noise at the best policy: fires, whatever the steps did
    rows = [row("policy-0", 0.0, 3.0), row("improve-1-1", 2.0, 3.0, 5.0, 3.0)]
    assert monitor_fires(rows, rows[-1])[0]
    rows[-1]["lead"] = 3.5
    assert not monitor_fires(rows, rows[-1])[0]


@pytest.mark.integration
def test_a_run_that_gains_nothing_fires_the_not_helping_monitor(tmp_path):
    """Improve at a learning rate of 1e-9 changes nothing: every Improve step gains 0 where BC goes on learning."""
    run_dir = tmp_path / "flat"
    proc = rest(
        "run", "--config", CONFIG, "--run", str(run_dir), "bc.steps=250", "improve.lr=1e-9", "eval.control=true"
    )
    run = Run.open(run_dir)
    assert run.metrics("policy-0")["valid"]["exact_match"] >= 30  # the comparison is not between two zeros
    helping = not_helping(run)
    assert helping["fired"]
    rows = {r["policy"]: r for r in helping["steps"]}
    assert rows["improve-1-1"]["gain"] == 0 and rows["improve-1-2"]["gain"] == 0
    assert rows["improve-1-2"]["no_gain"]
    assert "MONITOR: ReST is not helping" in proc.stdout and "Try:" in proc.stdout
    assert "ReST did not beat BC" in proc.stdout
    assert "ReST is not helping" in (run_dir / "report" / "index.html").read_text()


@pytest.mark.integration
def test_grow_coverage_counts_what_grow_found(clean_run):
    run = Run.open(clean_run)
    cover = grow_coverage(run, 1)
    rows = pd.read_parquet(clean_run / "grow-1")
    tau = max(run.config.improve.thresholds)
    hits = rows.assign(hit=rows["reward"] >= tau).groupby("source_id")["hit"]
    assert cover["pass@N"] == pytest.approx(100 * hits.any().mean(), abs=0.01)
    assert cover["pass@1"] == pytest.approx(100 * hits.mean().mean(), abs=0.01)
    assert cover["pass@1"] <= cover["pass@N"] and cover["samples_per_source"] == 8
    assert sum(d["sources"] for d in cover["difficulty"]) == rows["source_id"].nunique()
    assert sum(d["samples"] for d in cover["difficulty"]) == int((rows["reward"] >= tau).sum())
    valid = pd.read_parquet(clean_run / "policy-0" / "valid_outputs.parquet")
    assert cover["greedy_valid"] == pytest.approx(100 * (valid["reward"] >= tau).mean(), abs=0.01)


@pytest.mark.integration
def test_bc_early_stopping_keeps_the_best_checkpoint_and_counts_the_steps_taken(tmp_path):
    run_dir = tmp_path / "es"
    rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run_dir),
        "grow.steps=0",
        "bc.steps=600",
        "bc.valid_every=25",
        "bc.patience=2",
    )
    metrics = json.loads((run_dir / "policy-0" / "metrics.json").read_text())
    curve, taken = metrics["early_stopping"]["curve"], metrics["train"]["steps"]
    scores = [c["score"] for c in curve]
    assert [c["steps"] for c in curve] == list(range(25, taken + 1, 25))
    assert taken < 600  # the smoke task's validation reward flattens well before (~0.87 by step 300)
    best = scores.index(max(scores))  # the earliest best
    assert metrics["early_stopping"]["best_steps"] == curve[best]["steps"]
    assert all(s <= scores[best] for s in scores[-2:]) and len(scores) - 1 - best == 2  # stopped by patience
    assert metrics["valid"]["reward"] == pytest.approx(scores[best], abs=1e-4)  # policy-0 is that checkpoint
    manifest = json.loads((run_dir / "policy-0" / "_manifest.json").read_text())
    assert manifest["config"]["bc"]["valid_every"] == 25  # in policy-0's key when set
