"""The `rest` console script: run, grow, improve, eval, inspect.

    rest run --config configs/numbers.yaml --run runs/numbers [key.sub=value ...]
    rest grow --run runs/numbers          rest improve --run runs/numbers
    rest eval --run runs/numbers [--policy improve-2-2] [--data FILE.parquet]
    rest inspect runs/numbers

Bad input (a `RestError`) prints one line that says what to fix and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rest.errors import OS_ERROR_FIXES, RestError
from rest.monitors import input_use_line
from rest.run import SUMMARY_ROWS, Run, check_run_path, shown

# How long an interrupted command may take to tell the Prefect server that its flow run ended before it just exits.
GRACE_S = 10


def _setup_logging() -> None:
    logger = logging.getLogger("rest")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rest] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(column: str, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):  # rewards live in [0, 1] and need 3 decimals; points (0-100) and lengths need 1
            return f"{v:.3f}" if column == "reward" else f"{v:.1f}"
        return str(v)

    cells = [header] + [[fmt(c, v) for c, v in zip(header, r)] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_summary(run_dir: Path) -> None:
    run = Run.open(run_dir)
    record = run.record
    names = run.assessed_policies()
    keep = {names.index(record["best_policy"])} if record.get("best_policy") in names else set()
    rows = []
    for k in shown(len(names), keep):
        v = run.metrics(names[k])["valid"]
        rows.append([names[k], v["exact_match"], v["chrf"], v["bleu"], v["reward"], v["completion_tokens"]])
    left_out = len(run.policies()) - len(rows)
    print(f"\nValidation ({run.config.data.valid}), greedy decoding"
          + (f"; {left_out} of {len(run.policies())} policies not shown (not validated, eval.every, or summarised: "
             f"rest inspect {run_dir} --all):" if left_out else ":"))
    print(_table(["policy", "exact_match", "chrF", "BLEU", "reward", "tokens"], rows))
    test = record.get("test", {})
    if test:
        print(f"\nTest ({run.config.data.test}); best policy by validation reward: {record['best_policy']}")
        print(_table(["policy", "exact_match", "chrF", "BLEU", "reward", "tokens"], [[n, m["exact_match"], m["chrf"], m["bleu"], m["reward"], m["completion_tokens"]] for n, m in test.items()]))
    print(f"\nRun directory: {run_dir}  (rest inspect {run_dir}; pandas.read_parquet('{run_dir}/grow-1'))")
    report = run_dir / "report" / "index.html"
    if report.is_file():
        print(f"Report (plots, monitors, samples): {report}")
    for line in _monitor_alarms(run_dir):
        print(f"MONITOR: {line}")


def _monitor_alarms(run_dir: Path) -> list[str]:
    run = Run.open(run_dir)
    names = run.assessed_policies()
    out = []
    for name in names:
        monitors = run.metrics(name).get("monitors") or {}
        if monitors.get("input", {}).get("ignores_input"):
            out.append(input_use_line(name, monitors["input"]))
        alarm = monitors.get("alarm", {})
        if alarm.get("fired"):
            out.append(f"{name}: reward {alarm['reward_delta']:+.4f} while chrF {alarm['chrf_delta']:+.2f} (vs {alarm['previous']})")
    if names:
        out += run.metrics(names[0]).get("monitors", {}).get("probe_flags", [])
    return out


def inspect_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per artifact directory, published, partial or damaged, in the order run.json lists them."""
    from rest import artifacts

    run = Run.open(run_dir)
    record = run.record
    order = [a["name"] for a in record.get("artifacts", [])]
    dirs = [p.name for p in sorted(run_dir.iterdir()) if p.is_dir() and not p.name.startswith((".", "report", "comet"))]
    names = order + [d for d in dirs if d not in order]
    id_to_name = {a["id"]: a["name"] for a in record.get("artifacts", [])}
    rows = []
    for name in names:
        row: dict[str, Any] = {"artifact": name, "kind": "partial", "id": None, "parent": None}
        if run.manifest(name) is None:
            rows.append(row)
            continue
        try:
            manifest = run.verified(name)  # numbers shown are numbers checked: an edited manifest is not shown
        except RestError as exc:
            row.update(kind="damaged", problem=str(exc))
            rows.append(row)
            continue
        row.update(kind=manifest["kind"], id=manifest["id"], parent=", ".join(id_to_name.get(p, p) for p in manifest["parents"]))
        if manifest["kind"] == artifacts.GROW:
            s = manifest["stats"]
            row.update(rows=s["rows"], reward=s["reward_mean"], kept=" ".join(f"{t}:{f:.2f}" for t, f in s["kept_fraction"].items()), length=s["completion_tokens"])
        else:
            m = run.metrics(name)
            row["steps"] = m["train"]["steps"]
            if m["valid"] is not None:  # None: not validated (eval.every)
                v = m["valid"]
                row.update(reward=v["reward"], valid_exact_match=v["exact_match"], valid_chrf=v["chrf"], length=v["completion_tokens"])
            if "improve" in m:
                sel = m["improve"]  # a preference loss learns from pairs: their count instead of a fraction kept
                row["kept"] = f"{sel['tau']}:{sel['pairs']} pairs" if "pairs" in sel else f"{sel['tau']}:{sel['kept_fraction']:.2f}"
        rows.append(row)
    return rows


def summarise_rows(rows: list[dict[str, Any]], best: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The rows `rest inspect` prints without --all: every artifact of the Grow steps `shown` picks (first, last,
    evenly spaced, the best policy's, any with a partial or damaged artifact) and those of no Grow step; and a line
    on the rest."""
    step = {r["artifact"]: int(r["artifact"].split("-")[1]) for r in rows if r["artifact"].startswith(("grow-", "improve-"))}
    steps = sorted(set(step.values()))
    flagged = {steps.index(step[r["artifact"]]) for r in rows
               if r["artifact"] in step and (r["kind"] in ("partial", "damaged") or r["artifact"] == best)}
    picked = {steps[k] for k in shown(len(steps), flagged)}
    out = [r for r in rows if r["artifact"] not in step or step[r["artifact"]] in picked]
    if len(picked) == len(steps):
        return out, None
    grow = [r for r in rows if r["artifact"].startswith("grow-") and r.get("reward") is not None]
    trend = f"; Grow mean reward {grow[0]['reward']:.3f} (grow-{step[grow[0]['artifact']]}) -> {grow[-1]['reward']:.3f} (grow-{step[grow[-1]['artifact']]})" if grow else ""
    return out, f"{len(steps) - len(picked)} of {len(steps)} Grow steps and their Improve steps not shown{trend} (--all lists them)"


def cmd_inspect(args: argparse.Namespace) -> None:
    rows = inspect_rows(Path(args.run))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["artifact", "kind", "id", "parent", "rows", "steps", "reward", "kept", "valid_exact_match", "valid_chrf", "length"]
    best = Run.open(Path(args.run)).best_policy
    table, note = (rows, None) if args.all else summarise_rows(rows, best)
    print(_table(cols, [[r.get(c) for c in cols] for r in table]))
    if note:
        print(note)
    for r in rows:
        if r["kind"] == "damaged":
            print(f"DAMAGED: {r['problem']}")
    if best:
        print(f"best policy: {best}")


def _config_for(args: argparse.Namespace):
    """`rest run` takes --config (or the run's own); the other commands work on an existing run."""
    from rest.artifacts import CONFIG_FILE
    from rest.config import load_config

    run_dir = Path(args.run)
    check_run_path(run_dir)  # before the config and the data are read
    stored = run_dir / CONFIG_FILE
    if args.command != "run":
        Run.open(run_dir)  # a RestError that says how to start a run when there is none
    path = args.config or (stored if stored.is_file() else None)
    return load_config(path, args.overrides)


def cmd_pipeline(args: argparse.Namespace) -> None:
    cfg = _config_for(args)  # first: a config error is one line in a second, before Prefect and torch are imported

    from flows.rest_flows import check_task_runner
    from flows.temporary_server import temporary_server
    from rest import stages
    from rest.artifacts import run_lock

    check_task_runner(cfg.orchestration.task_runner)  # before anything is written
    run_dir = Path(args.run)
    if args.command != "run":
        Run.open(run_dir).check_published()  # they build on earlier steps: a damaged one is refused, not used
    stages.start_run(run_dir, cfg)  # every input checked first: bad input writes nothing
    with run_lock(run_dir):
        with temporary_server():
            _pipeline(args.command, run_dir)


def _pipeline(command: str, run_dir: Path) -> None:
    from flows.rest_flows import finish_flow, grow_flow, improve_flow, rest_flow

    if command == "run":
        rest_flow(str(run_dir))
        print_summary(run_dir)
    elif command == "grow":
        print(grow_flow(str(run_dir)))
    else:
        print("\n".join(improve_flow(str(run_dir))))
        finish_flow(str(run_dir))
        print_summary(run_dir)


def _policy_name(run_dir: Path, name: str | None) -> str:
    """The policy --policy names (default: the best, else the last), verified: a damaged one is refused."""
    run = Run.open(run_dir)
    name = name or run.best_policy or (run.policies() or ["policy-0"])[-1]
    if name not in run.policies():
        known = ", ".join(run.policies()) or "none yet"
        raise RestError(f"--policy {name}: no published policy of that name in {run_dir} (published: {known})")
    run.verified(name)
    return name


def _engine(run_dir: Path, cfg, name: str):
    from rest.engines import engine_for

    return engine_for(cfg, run_dir / name, Run.open(run_dir).artifact_id(name))


def _best_of_n(args: argparse.Namespace, cfg, name: str, df):
    from rest import rewards
    from rest.best_of_n import best_of_n, reward_for
    from rest.stages import derive_seed

    rewards.use_device(cfg.device)  # a learned reward scores where the policy samples
    reward = reward_for(args.reward, args.reward_model or cfg.reward.learned, df)  # before sampling: fail fast
    seed = derive_seed(cfg.seed, "best-of-n", args.best_of_n) if args.seed is None else args.seed
    return best_of_n(_engine(Path(args.run), cfg, name), df, cfg, args.best_of_n, reward, seed, args.temperature)


def cmd_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from rest.data import load_split
    from rest.evaluation import evaluate
    from rest.metrics import corpus_metrics

    run_dir = Path(args.run)
    cfg = _config_for(args)
    name = _policy_name(run_dir, args.policy)
    data = args.data or cfg.data.test
    df = load_split(data, "--data")
    if args.best_of_n:
        table = _best_of_n(args, cfg, name, df)
        greedy, _ = evaluate(_engine(run_dir, cfg, name), df, cfg)
        metrics = {
            "best_of_n": args.best_of_n, "reward_name": args.reward,
            **corpus_metrics(table["output"].tolist(), table["reference"].tolist()),
            "chosen_reward": round(float(table["reward"].mean()), 4),
            "candidate_reward": round(float(table["candidate_rewards"].map(np.mean).mean()), 4),
            "n": len(table), "greedy": greedy,
        }
    else:
        metrics, _ = evaluate(_engine(run_dir, cfg, name), df, cfg)
    print(json.dumps({"policy": name, "data": data, **metrics}, indent=2))


def cmd_generate(args: argparse.Namespace) -> None:
    from rest.best_of_n import write_best_of_n
    from rest.data import load_split

    run_dir = Path(args.run)
    cfg = _config_for(args)
    name = _policy_name(run_dir, args.policy)
    df = load_split(args.data, "--data", need_reference=False)
    table = _best_of_n(args, cfg, name, df)
    write_best_of_n(Path(args.out), table)
    print(
        f"{args.out}: {len(table)} rows, best of {args.best_of_n} by `{args.reward}` from {name}; "
        f"mean reward chosen {table['reward'].mean():.4f}, of all candidates "
        f"{table['candidate_rewards'].map(lambda r: sum(r) / len(r)).mean():.4f}"
    )


def cmd_report(args: argparse.Namespace) -> None:
    from rest.report import report_summary, write_report

    run_dir = Path(args.run)
    Run.open(run_dir)  # a RestError when it is not a run directory
    path = write_report(run_dir)
    if args.json:
        print(json.dumps({"report": str(path), **report_summary(run_dir)}, indent=2))
    else:
        print(path)


def cmd_reward(args: argparse.Namespace) -> None:
    from rest.config import RewardModelConfig, load_config
    from rest.reward_model import train_reward_model

    cfg = load_config(args.config, args.overrides, model=RewardModelConfig)
    if args.out:
        cfg = cfg.model_copy(update={"out": args.out})
    manifest = train_reward_model(cfg)
    m = manifest["metrics"]
    v, t = m["valid"], m["train"]
    print(f"Reward model ({m['objective']} on {m['score_column']}): {cfg.out}  id {manifest['id']}")
    # a classifier adds its accuracy; a seq2seq model how often it keeps the best completion and changes a worse one
    extra = [k for k in ("accuracy", "positive_fraction", "keeps_best", "flags_worse") if k in v]

    def num(d, k):
        return f"{d[k]:.3f}" if d.get(k) is not None else "n/a"

    print(_table(
        ["split", "completions", "pairs", "pairwise_accuracy", f"clear_pairs(>={cfg.data.clear_gap:g})", "accuracy_clear", "mse",
         "pearson", *extra],
        [[name, d["rows"], d["pairs"], num(d, "pairwise_accuracy"), d.get("clear_pairs"),
          *(num(d, k) for k in ("pairwise_accuracy_clear", "mse", "pearson", *extra))]
         for name, d in (("held-out", v), ("train", t))],
    ))
    print(f"Use it: reward.components={{learned: 1.0}} reward.learned={cfg.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rest", description="Reinforced Self-Training: Grow/Improve as a Prefect pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole pipeline: policy-0, G x (Grow, Improve steps), test of the best policy",
        "grow": "one more Grow step on an existing run",
        "improve": "the Improve steps of the latest Grow step",
        "eval": "evaluate a policy of a run on a Parquet/JSONL file; prints JSON",
        "generate": "best-of-N outputs of a policy for a Parquet/JSONL file of sources, with every candidate's reward",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--run", required=True, help="run directory, e.g. runs/numbers")
        p.add_argument("--config", help="YAML config (default: the run's config.yaml)" + ("; required for a new run" if name == "run" else ""))
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. grow.num_samples=4")
        if name in ("eval", "generate"):
            p.add_argument("--policy", help="policy directory name (default: the run's best policy)")
            if name == "eval":
                p.add_argument("--data", help="file with `source` and `reference` columns (default: data.test)")
            else:
                p.add_argument("--data", required=True, help="file with a `source` column (`reference` optional)")
                p.add_argument("--out", required=True, help="the Parquet file to write")
            p.add_argument("--best-of-n", type=int, default=0 if name == "eval" else None, required=name == "generate",
                           metavar="K", help="sample K outputs per source and keep the one the reward likes best"
                           + (" (default: greedy decoding)" if name == "eval" else ""))
            p.add_argument("--reward", default="learned" if name == "generate" else "chrf",
                           help="what picks the best: chrf, bleu, ter, exact_match (need references) or learned "
                           "(default: %(default)s)")
            p.add_argument("--reward-model", help="reward-model artifact for --reward learned (default: reward.learned of the run)")
            p.add_argument("--temperature", type=float, help="sampling temperature (default: grow.temperature of the run)")
            p.add_argument("--seed", type=int, help="sampling seed (default: derived from the run's seed and K)")
    p = sub.add_parser("reward", help="learned reward models: `rest reward train --config FILE`")
    rsub = p.add_subparsers(dest="reward_command", required=True)
    p = rsub.add_parser("train", help="train a reward model on Grow shards; writes an artifact (default: the config's `out`)")
    p.add_argument("--config", required=True, help="YAML reward-model config, e.g. configs/reward-numbers.yaml")
    p.add_argument("--out", help="artifact directory (default: `out` of the config)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. objective=bradley_terry")
    p = sub.add_parser("inspect", help="one table row per artifact of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (every row)")
    p.add_argument("--all", action="store_true", help=f"every row (a run of more than {SUMMARY_ROWS} Grow steps is summarised)")
    p = sub.add_parser("report", help="write RUN/report/index.html: plots, monitors, samples, lineage")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="also print the verdicts and monitor lines as JSON")
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Stopping: Ctrl-C (SIGINT to the process group) or SIGTERM (a scheduler, `kill`) ends the command within seconds,
# with one line, the run lock free and no process of ours left. Nothing is lost: artifacts appear whole or not at
# all (manifest last), so the same command resumes.

_STOPPING: list[int] = []


def _reap_children() -> None:
    """Stop every process this one started (the temporary Prefect server, Dask workers), then wait for them."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _exit_now(signum: int) -> None:
    """Exit without waiting for worker threads (a shard mid-sample would hold the exit for minutes)."""
    try:
        _reap_children()
    finally:
        sys.stderr.flush()
        os._exit(128 + signum)


def _on_signal(signum: int, frame: Any) -> None:
    if _STOPPING:  # a second signal: now
        _exit_now(signum)
    _STOPPING.append(signum)
    logging.disable(logging.CRITICAL)  # Prefect's crash reports and tracebacks: the line below says it all
    print(
        f"[rest] stopped by {signal.Signals(signum).name}: published artifacts and finished Grow shards are kept; "
        "run the same command again to resume",
        file=sys.stderr, flush=True,
    )
    timer = threading.Timer(GRACE_S, _exit_now, (signum,))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt  # unwinds the flow (which reports its end to the server), then main() exits


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `rest inspect RUN | head` ends quietly
    args = build_parser().parse_args(argv)
    _setup_logging()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    try:
        if args.command == "inspect":
            cmd_inspect(args)
        elif args.command == "report":
            cmd_report(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "generate":
            cmd_generate(args)
        elif args.command == "reward":
            cmd_reward(args)
        else:
            cmd_pipeline(args)
    except RestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in OS_ERROR_FIXES:
            raise
        where = exc.filename or getattr(args, "run", "")
        print(f"error: {where}: {exc.strerror}; {OS_ERROR_FIXES[exc.errno]}", file=sys.stderr)
        return 2
    except BaseException:
        if _STOPPING:  # interrupted: the line is printed; exit without a traceback and without waiting for threads
            _exit_now(_STOPPING[0])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
