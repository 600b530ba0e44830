"""The end of a run: the best policy by validation reward, and the test metrics of it and policy-0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rest.artifacts.run import Run
from rest.data.splits import load_split
from rest.errors import RestError
from rest.evaluation.policy import evaluate
from rest.grow import engines

# ---------------------------------------------------------------------------------------------------------------
# The end of a run


def finish_run(run_dir: Path) -> dict[str, Any]:
    """Name the best policy by validation reward (earliest on ties) in run.json, with test metrics of it and
    policy-0."""
    run = Run.open(run_dir)
    names = run.assessed_policies()
    if not names:
        raise RestError(f"{run_dir} has no published policy yet")
    valid = {n: run.metrics(n)["valid"] for n in names}
    best = max(names, key=lambda n: (valid[n]["reward"], -names.index(n)))
    test_df = load_split(run.config.data.test, "data.test")
    test = {}
    for name in dict.fromkeys(["policy-0", best]):
        engine = engines.engine_for(run.config, run.dir(name), run.artifact_id(name))
        test[name], _ = evaluate(engine, test_df, run.config)
    engines.release()
    run.update_record(best_policy=best, test=test)
    return {"best_policy": best, "valid": valid, "test": test}
