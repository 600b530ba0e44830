"""`rest reward train --config FILE`: a learned reward model. `rest reward serve --config FILE`: a run config's
reward over HTTP (rest/rewards/remote.py has the protocol)."""

from __future__ import annotations

import argparse

from rest.cli.tables import format_table


def cmd_reward(args: argparse.Namespace) -> None:
    if args.reward_command == "serve":
        return cmd_serve(args)
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


def cmd_serve(args: argparse.Namespace) -> None:
    from rest.config import load_config
    from rest.models.policy import resolve_device
    from rest.rewards.remote import make_server

    cfg = load_config(args.config, args.overrides)
    server = make_server(cfg.reward, args.host, args.port, str(resolve_device(cfg.device, "device")))
    host, port = server.server_address[:2]
    print(
        f"[rest] serving reward {dict(cfg.reward.components)} on http://{host}:{port}/ (POST batches; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
