"""comet-ml tracking: one experiment per run, written from the run directory's artifacts.

    archive = log_run(Path("runs/numbers"))   # RUN/comet/<key>.zip with tracking.comet=offline

The experiment is built from what the run published, not streamed while it trains: a run that was killed and
resumed, or extended by `rest grow`, still gives one experiment with every policy in order, and the archive is
rebuilt whole (written to a staging directory, then swapped in). What it holds:

- parameters: the resolved config, flattened (`grow.num_samples`, ...);
- metrics by prefix, with step = the policy's index in the run (policy-0 = 0, improve-1-1 = 1, ...):
  `eval/...` (validation metrics and monitors of every policy, pass@k and maj@k with eval.samples), `test/...`
  (the test metrics of policy-0 and the best policy), `bc/...` (policy-0's training),
  `improve/...` (each Improve step's selection and training), `grow/...` (each Grow step, at the step of the
  policy that sampled it);
- a table asset per Grow step (`grow-<g>-sample.csv`, SAMPLE_ROWS rows) and the report page.

Offline, comet makes no network attempt once COMET_AUTO_LOG_ENV_DETAILS and COMET_ERROR_TRACKING_ENABLE are off
(rest/environment.py sets both when `rest` is imported, before comet_ml is), and every auto-logger is off here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rest.artifacts import manifests, run_record
from rest.artifacts.run import Run
from rest.artifacts.shards import read_grow
from rest.errors import RestError

log = logging.getLogger("rest")

COMET_DIR = "comet"
SAMPLE_ROWS = 64  # rows of each Grow step logged as a table asset


def check_tracking(mode: str) -> None:
    """Before a run starts: online tracking without a key would fail only at the end."""
    if mode == "online" and not os.environ.get("COMET_API_KEY"):
        raise RestError(
            "tracking.comet=online needs COMET_API_KEY in the environment (your comet.com API key); "
            "or use tracking.comet=offline (an archive under the run directory, upload it later) or off"
        )


def experiment_key(run_dir: Path) -> str:
    """Stable per run directory (its path and creation time): 32 hex characters, as comet wants."""
    record = run_record.read_run(run_dir)
    return hashlib.sha256(f"{Path(run_dir).resolve()}|{record.get('created')}".encode()).hexdigest()[:32]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; an empty mapping (reward.rules: {}) has no leaf and gives no key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_metrics(run_dir: Path) -> list[tuple[str, int, dict[str, float]]]:
    """(policy or grow step, step, {prefixed metric: value}) for everything the run published."""
    run = Run.open(run_dir)
    names = run.policies()
    index = {n: k for k, n in enumerate(names)}
    rows: list[tuple[str, int, dict[str, float]]] = []
    for name in names:
        m = run.metrics(name)
        mon = m.get("monitors") or {}
        values = {f"eval/{k}": v for k, v in (m["valid"] or {}).items() if k != "n"}  # None: not validated
        values["eval/drift_chrf"] = mon.get("drift_chrf")
        values["eval/drift_meteor"] = mon.get("drift_meteor")
        values["eval/length_ratio"] = mon.get("length_ratio")
        values["eval/probe_flags"] = len(mon.get("probe_flags", []))
        values["eval/alarm"] = int(bool(mon.get("alarm", {}).get("fired")))
        prefix = "bc" if name == "policy-0" else "improve"
        values.update({f"{prefix}/{k}": v for k, v in m["train"].items()})
        values.update({f"improve/{k}": v for k, v in m.get("improve", {}).items() if k != "train_mix"})
        rows.append((name, index[name], values))
    for name, test in (run.record.get("test") or {}).items():  # policy-0 and the best: greedy and sampled
        rows.append((name, index.get(name, 0), {f"test/{k}": v for k, v in test.items() if k != "n"}))
    for grow in run.published("grow-"):
        manifest = run.verified(grow)
        st = manifest["stats"]
        sampler = manifest["policy"]
        values = {
            "grow/reward_mean": st["reward_mean"],
            **{f"grow/reward_{q}": v for q, v in st["reward_quantiles"].items()},
            **{f"grow/kept_fraction_tau_{t}": v for t, v in st["kept_fraction"].items()},
            "grow/completion_tokens": st["completion_tokens"],
            "grow/samples_per_s": st["samples_per_s"],
            "grow/distinct_per_source": st["distinct_per_source"],
        }
        rows.append((grow, index.get(sampler, 0), values))
    return [
        (n, k, {key: v for key, v in vals.items() if isinstance(v, (int, float)) and v is not None})
        for n, k, vals in rows
    ]


def _experiment(mode: str, directory: Path, key: str, cfg):
    import comet_ml

    logging.getLogger("comet_ml").setLevel(logging.WARNING)  # its INFO lines name the staging directory
    settings = comet_ml.ExperimentConfig(
        offline_directory=str(directory) if mode == "offline" else None,
        name=directory.parent.name,
        log_code=False,
        log_graph=False,
        parse_args=False,
        log_git_metadata=False,
        log_git_patch=False,
        log_env_details=False,
        log_env_gpu=False,
        log_env_host=False,
        log_env_cpu=False,
        log_env_network=False,
        log_env_disk=False,
        # comet documents False ("no stdout/stderr capture"); its signature types the value as a string
        auto_output_logging=False,  # ty: ignore[invalid-argument-type]
        auto_param_logging=False,
        auto_metric_logging=False,
        auto_log_co2=False,
        display_summary_level=0,
    )
    if mode == "offline":
        return comet_ml.start(
            online=False, project_name=cfg.tracking.project, experiment_key=key, experiment_config=settings
        )
    return comet_ml.start(
        api_key=os.environ["COMET_API_KEY"],
        workspace=cfg.tracking.workspace,
        project_name=cfg.tracking.project,
        experiment_key=key,
        mode="get_or_create",
        online=True,
        experiment_config=settings,
    )


def log_run(run_dir: Path, report: Path | None = None) -> Path | None:
    """Write the run's experiment (see the module docstring). Returns the offline archive, or None."""
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    cfg = run.config
    mode = cfg.tracking.comet
    if mode == "off":
        return None
    check_tracking(mode)
    key = experiment_key(run_dir)
    final = run_dir / COMET_DIR
    directory = manifests.staging(final) if mode == "offline" else final
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    exp = _experiment(mode, directory, key, cfg)
    try:
        exp.log_parameters(flatten(cfg.model_dump(mode="json")))
        exp.log_others(
            {"run_dir": str(run_dir.resolve()), "best_policy": run_record.read_run(run_dir).get("best_policy")}
        )
        for _name, step, values in run_metrics(run_dir):
            exp.log_metrics(values, step=step)
        for grow in run.published("grow-"):
            run.verified(grow)
            rows = read_grow(run_dir / grow)
            n = min(SAMPLE_ROWS, len(rows))
            if n:
                sample = rows.sample(n=n, random_state=0).sort_values(["source_id", "sample_index"])
                exp.log_table(f"{grow}-sample.csv", tabular_data=sample.drop(columns=["policy"]))
        if report is not None and report.is_file():
            exp.log_asset(str(report), file_name="report.html")
    finally:
        exp.end()
    if mode != "offline":
        return None
    archives = sorted(directory.glob("*.zip"))
    if not archives:
        raise RuntimeError(f"comet-ml wrote no offline archive in {directory}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(directory, final)
    log.info(
        f"comet-ml (offline): {final / archives[0].name}; upload it with `comet upload {final / archives[0].name}`"
    )
    return final / archives[0].name


def read_archive(path: Path) -> dict[str, Any]:
    """What an offline archive holds:
    {"parameters": {name: value}, "metrics": [{name, value, step}], "assets": [names]}."""
    import json
    import zipfile

    out: dict[str, Any] = {"parameters": {}, "metrics": [], "assets": []}
    with zipfile.ZipFile(path) as z:
        for line in z.read("messages.json").decode().splitlines():
            msg = json.loads(line) if line.strip() else {}
            payload = msg.get("payload", {})
            if msg.get("type") == "parameter_msg":
                param = payload.get("param") or payload["params"]  # `params` for list values
                out["parameters"][param["paramName"]] = param["paramValue"]
            elif msg.get("type") == "metric_msg":
                m = payload["metric"]
                out["metrics"].append({"name": m["metricName"], "value": m["metricValue"], "step": m["step"]})
            elif msg.get("type") == "file_upload":
                out["assets"].append(payload["additional_params"]["fileName"])
    return out
