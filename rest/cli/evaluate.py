"""`rest eval` and `rest generate`: a policy of a run on a file, greedy or best-of-N."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rest.artifacts.run import Run
from rest.cli.pipeline import config_for
from rest.errors import RestError


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
    from rest.grow.engines import engine_for

    return engine_for(cfg, run_dir / name, Run.open(run_dir).artifact_id(name))


def _best_of_n(args: argparse.Namespace, cfg, name: str, df):
    from rest.evaluation.best_of_n import best_of_n
    from rest.rewards.components import named_component
    from rest.seeds import derive_seed

    # before sampling: fail fast; a learned reward scores where the policy samples
    references = df["reference"].where(df["reference"].notna(), None).tolist()
    reward = named_component(args.reward, cfg.reward, args.reward_model, references, cfg.device)
    seed = derive_seed(cfg.seed, "best-of-n", args.best_of_n) if args.seed is None else args.seed
    return best_of_n(_engine(Path(args.run), cfg, name), df, cfg, args.best_of_n, reward, seed, args.temperature)


def _eval_seed(cfg, data: str) -> int:
    """The sampled evaluation's seed: the run's for its test split (the numbers `rest run` printed), else per file."""
    from rest.seeds import derive_seed

    return derive_seed(cfg.seed, "eval", "test" if data == cfg.data.test else data)


def cmd_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from rest.data.splits import load_split
    from rest.evaluation.policy import evaluate
    from rest.rewards.metrics import corpus_metrics

    run_dir = Path(args.run)
    cfg = config_for(args)
    name = _policy_name(run_dir, args.policy)
    data = args.data or cfg.data.test
    # the run's column mapping: the test split's for a file of the user's too (its shared entries and test's)
    df = load_split(data, "--data", columns=cfg.data.columns_for("test"))
    if args.best_of_n:
        table = _best_of_n(args, cfg, name, df)
        greedy, _ = evaluate(_engine(run_dir, cfg, name), df, cfg, _eval_seed(cfg, data))
        metrics = {
            "best_of_n": args.best_of_n,
            "reward_name": args.reward,
            **corpus_metrics(table["output"].tolist(), table["reference"].tolist()),
            "chosen_reward": round(float(table["reward"].mean()), 4),
            "candidate_reward": round(float(table["candidate_rewards"].map(np.mean).mean()), 4),
            "n": len(table),
            "greedy": greedy,
        }
    else:
        metrics, _ = evaluate(_engine(run_dir, cfg, name), df, cfg, _eval_seed(cfg, data))
    print(json.dumps({"policy": name, "data": data, **metrics}, indent=2))


def cmd_generate(args: argparse.Namespace) -> None:
    from rest.data.splits import load_split
    from rest.evaluation.best_of_n import write_best_of_n

    run_dir = Path(args.run)
    cfg = config_for(args)
    name = _policy_name(run_dir, args.policy)
    df = load_split(args.data, "--data", need_reference=False, columns=cfg.data.columns_for("test"))
    table = _best_of_n(args, cfg, name, df)
    write_best_of_n(Path(args.out), table)
    print(
        f"{args.out}: {len(table)} rows, best of {args.best_of_n} by `{args.reward}` from {name}; "
        f"mean reward chosen {table['reward'].mean():.4f}, of all candidates "
        f"{table['candidate_rewards'].map(lambda r: sum(r) / len(r)).mean():.4f}"
    )
