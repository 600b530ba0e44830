"""The end of a run: the best policy by validation (eval.select_by), and the test metrics of it and policy-0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.artifacts.run import Run
from rest.data.splits import data_split
from rest.errors import RestError
from rest.evaluation.policy import evaluate, selection_score
from rest.grow import engines
from rest.stages.common import derive_seed

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
    test = {}
    for name in dict.fromkeys(["policy-0", best]):
        engine = engines.engine_for(run.config, run.dir(name), run.artifact_id(name))
        test[name], _ = evaluate(engine, test_df, run.config, derive_seed(run.config.seed, "eval", "test"))
    engines.release()
    run.update_record(best_policy=best, test=test)
    return {"best_policy": best, "valid": valid, "test": test}
