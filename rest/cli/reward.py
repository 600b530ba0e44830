"""`rest reward train --config FILE`: a learned reward model."""

from __future__ import annotations

import argparse

from rest.cli.tables import format_table


def cmd_reward(args: argparse.Namespace) -> None:
    from rest.config import RewardModelConfig, load_config
    from rest.rewards.reward_training import train_reward_model

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

    print(
        format_table(
            [
                "split",
                "completions",
                "pairs",
                "pairwise_accuracy",
                f"clear_pairs(>={cfg.data.clear_gap:g})",
                "accuracy_clear",
                "mse",
                "pearson",
                *extra,
            ],
            [
                [
                    name,
                    d["rows"],
                    d["pairs"],
                    num(d, "pairwise_accuracy"),
                    d.get("clear_pairs"),
                    *(num(d, k) for k in ("pairwise_accuracy_clear", "mse", "pearson", *extra)),
                ]
                for name, d in (("held-out", v), ("train", t))
            ],
        )
    )
    print(f"Use it: reward.components={{learned: 1.0}} reward.learned={cfg.out}")
