"""The end of a run: the best policy by validation (eval.select_by), and the test metrics of it and policy-0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rest.artifacts.run import Run
from rest.data.splits import data_split
from rest.errors import RestError
from rest.evaluation.control import CONTROL, NOISE_SE, control_metric, has_control, paired, row_scores
from rest.evaluation.policy import evaluate, selection_score
from rest.grow import engines
from rest.seeds import derive_seed

# ---------------------------------------------------------------------------------------------------------------
# The end of a run


def finish_run(run_dir: Path) -> dict[str, Any]:
    """Name the best policy by validation (eval.select_by: greedy reward, pass@1 or maj@k; earliest on ties) in
    run.json, with test metrics of it and policy-0."""
    run = Run.open(run_dir)
    names = run.assessed_policies()
    if not names:
        raise RestError(f"{run_dir} has no published policy yet")
    valid = {n: run.metrics(n)["valid"] for n in names}
    best = max(names, key=lambda n: (selection_score(valid[n], run.config), -names.index(n)))
    test_df = data_split(run.config.data, "test")
    test, outputs = {}, {}
    control = has_control(run) and run.config.eval.control
    for name in dict.fromkeys(["policy-0", best] + ([CONTROL] if control else [])):
        engine = engines.engine_for(run.config, run.dir(name), run.artifact_id(name))
        test[name], outputs[name] = evaluate(engine, test_df, run.config, derive_seed(run.config.seed, "eval", "test"))
    engines.release()
    versus = None
    if control:
        versus = compare_on_test(run, best, test.pop(CONTROL), outputs[best], outputs[CONTROL])
    run.update_record(best_policy=best, test=test, control=versus)
    return {"best_policy": best, "valid": valid, "test": test, "control": versus}


def compare_on_test(
    run: Run, best: str, control_test: dict[str, Any], ours: pd.DataFrame, theirs: pd.DataFrame
) -> dict[str, Any]:
    """run.json's `control` entry: the best policy against the BC control on test, row by row (paired)."""
    metric, words = control_metric(run.config)
    lead, se = paired(row_scores(ours, metric), row_scores(theirs, metric))
    control_metrics = run.metrics(CONTROL)
    return {
        "metric": metric,
        "words": words,
        "policy": best,
        "steps": int(control_metrics["total_steps"]),
        "control_steps": int(control_metrics["selected_steps"]),
        "rest": round(100 * float(row_scores(ours, metric).mean()), 2),
        "bc": round(100 * float(row_scores(theirs, metric).mean()), 2),
        "lead": lead,
        "noise": round(NOISE_SE * se, 2),
        "n": len(ours),
        "test": control_test,
    }
