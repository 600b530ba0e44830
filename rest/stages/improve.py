"""Improve step i after Grow g: fine-tune on the Grow rows that clear tau_i, mixed with data.train."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rest.artifacts.manifests import (
    existing,
)
from rest.artifacts.run import Run
from rest.artifacts.shards import (
    grow_columns,
    read_grow,
)
from rest.config import (
    ImproveConfig,
    RunConfig,
)
from rest.data.batching import mix_batches, text_lengths
from rest.data.splits import data_split
from rest.errors import RestError
from rest.grow import engines
from rest.improve.objectives import (
    Batch,
    PairBatch,
    objective_for,
    token_weights,
)
from rest.improve.selection import preference_pairs, select, sparse_selection
from rest.models import resident
from rest.stages.common import (
    IMPROVE_KEYS,
    assess,
    derive_seed,
    dropout_seed,
    fit,
    policy_slice,
    publish_policy,
    train_stats,
)
from rest.training import distributed

log = logging.getLogger("rest")

# ---------------------------------------------------------------------------------------------------------------
# Improve


def improve(run_dir: Path, g: int, i: int) -> str:
    """Improve step i after Grow g: fine-tune on grow-g rows with reward >= tau_i, mixed with data.train."""
    run = Run.open(run_dir)
    cfg = run.config
    ic = cfg.improve
    if not 1 <= i <= len(ic.thresholds):
        raise RestError(f"improve.thresholds has {len(ic.thresholds)} entries; there is no Improve step {i}")
    tau = ic.thresholds[i - 1]
    name = f"improve-{g}-{i}"
    init, grow_name = run.improve_init(g, i), f"grow-{g}"
    earlier = [f"grow-{h}" for h in range(1, g)] if ic.accumulate else []  # improve.accumulate: their samples too
    # verified: a damaged input is refused here
    parents = [run.artifact_id(init), run.artifact_id(grow_name), *(run.artifact_id(e) for e in earlier)]
    cfg_slice = policy_slice(cfg, *IMPROVE_KEYS)
    cfg_slice["improve"]["tau"] = tau
    if existing(run.dir(name), cfg_slice, parents):
        log.info(f"{name}: published, skipping")
        return name
    engines.suspend()  # the Grow engine is not needed while training (here or in the ranks launched): asleep or gone
    if ic.processes > 1 and not distributed.launched():
        distributed.launch("improve", run_dir, g, i, processes=ic.processes, key="improve.processes")
        run.verified(name)
        return name
    grow_summary = run.verified(grow_name)["stats"]
    train_df = data_split(cfg.data, "train")
    rng = np.random.default_rng(derive_seed(cfg.seed, "improve", g, i))
    objective = objective_for(ic)
    make_batches = _pair_batches if objective.data == "pairs" else _row_batches
    batches, selection = make_batches(run, [*earlier, grow_name], grow_summary, tau, ic, train_df, rng)
    if objective.data == "pairs" and not selection["pairs"]:
        log.warning(
            f"{name}: no pair of Grow samples qualifies (tau={tau}, margin={ic.preference.margin}); this "
            "step trains on data.train only"
        )
    elif objective.data != "pairs" and (
        sparse := sparse_selection(
            tau,
            selection["kept_fraction"] if selection["kept_unique"] else 0.0,
            selection["grow_rows"],
            grow_summary.get("reward_quantiles", {}),
        )
    ):
        log.warning(f"{name}: {sparse}")
        selection["warning"] = sparse
    device = distributed.rank_device(cfg.device)
    policy = resident.take(run.dir(init), device=device)  # the policy just published stays in memory
    reference = None
    if objective.needs_reference:
        # KL prior: policy-0; a preference loss: the policy that sampled the Grow step, or policy-0
        ref_name = (
            run.grow_policy(g) if objective.data == "pairs" and ic.preference.reference == "grower" else "policy-0"
        )
        run.verified(ref_name)
        # The reference is the start with LoRA: the policy with its adapter switched off, no second copy.
        reference = policy if ic.lora and init == ref_name else resident.get(run.dir(ref_name), device=device)
    stats = fit(policy, batches, ic, cfg, dropout_seed(cfg.seed, "improve", g, i), name, objective, reference)
    if distributed.world()[0] != 0:
        return name  # rank 0 validates and publishes
    if validated(cfg, g):
        valid, outputs, monitors = assess(run, name, policy, previous=run.improve_previous(g, i))
    else:
        valid, outputs, monitors = None, None, None
    metrics = {"valid": valid, "improve": selection, "train": train_stats(stats), "monitors": monitors}
    publish_policy(
        run, name, policy, outputs, metrics, parents, cfg_slice, {"init": init, "grow": grow_name, "timing": stats}
    )
    learnt = (
        f"{selection['pairs']} pairs of {selection['pair_sources']} sources"
        if "pairs" in selection
        else f"{selection['kept_unique']} unique samples of {selection['kept_sources']} sources"
    )
    checked = (
        f"valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}"
        if valid
        else f"not validated (eval.every={cfg.eval.every})"
    )
    log.info(f"{name}: tau={tau} learnt from {learnt}, {checked}")
    return name


def validated(cfg: RunConfig, g: int) -> bool:
    """Whether the Improve policies of Grow step g are validated: every eval.every-th step, and the last."""
    return g % cfg.eval.every == 0 or g >= cfg.grow.steps


def _row_batches(
    run: Run,
    grow_names: list[str],
    grow_summary: dict[str, Any],
    tau: float,
    ic: ImproveConfig,
    train_df: pd.DataFrame,
    rng: np.random.Generator,
) -> tuple[list[Batch], dict[str, Any]]:
    """Improve's rows: the Grow samples selection keeps at tau, mixed with data.train (improve.train_mix).

    `grow_names` ends with this step's Grow; the earlier ones are there with improve.accumulate. The rows of all
    are selected together: one sample per (source, completion), so a source solved at two steps counts its answer
    once, and percentile selection compares all of a source's samples."""
    grow_name = grow_names[-1]
    # Read what selection needs, filtered while reading: memory follows the kept rows, not the Grow step's size
    # (percentile selection compares each source's N rewards, so it reads every row of those columns). The Grow
    # step's row count and kept fraction at each tau are in its manifest (finish_grow's stats).
    columns = ["source_id", "source", "sample_index", "completion", "reward"]
    scores_column = None if ic.token_weights is None else f"reward_tokens_{ic.token_weights}"
    if scores_column is not None:
        if scores_column not in grow_columns(run.dir(grow_name)):
            raise RestError(
                f"improve.token_weights: {ic.token_weights} reads the column {scores_column}, which the shards of "
                f"{run.dir(grow_name)} do not have: only a reward model trained with objective: seq2seq scores tokens "
                "(reward.learned); set improve.token_weights: null for a scalar reward"
            )
        columns.append(scores_column)

    def keep(rows: pd.DataFrame) -> pd.DataFrame:
        return select(rows, tau, ic.selection, ic.percentile, ic.top_k, ic.max_per_source)

    floor = None if ic.selection == "percentile" else tau
    parts = [read_grow(run.dir(name), columns, min_reward=floor) for name in grow_names]
    kept = keep(pd.concat(parts, ignore_index=True))
    latest = len(keep(parts[-1])) if len(parts) > 1 else None  # what this Grow step alone gives, for the manifest
    del parts
    k_src, k_tgt, k_w = kept["source"].tolist(), kept["completion"].tolist(), kept["reward"].tolist()
    k_scores = None if scores_column is None else kept[scores_column].tolist()
    t_src, t_tgt = train_df["source"].tolist(), train_df["reference"].tolist()
    lengths = (text_lengths(k_src, k_tgt), text_lengths(t_src, t_tgt)) if ic.group_by_length else None
    plan = mix_batches(len(kept), len(train_df), ic.train_mix, ic.batch_size, ic.steps, rng, lengths)
    batches = [
        Batch(
            [k_src[j] for j in ki] + [t_src[j] for j in ti],
            [k_tgt[j] for j in ki] + [t_tgt[j] for j in ti],
            [k_w[j] for j in ki] + [1.0] * len(ti) if ic.reward_weighted else None,
            None if k_scores is None else [k_scores[j] for j in ki] + [None] * len(ti),
        )
        for ki, ti in plan
    ]
    selection = {
        "tau": tau,
        "grow_rows": grow_summary["rows"],
        "kept_fraction": grow_summary["kept_fraction"][str(tau)],
        "kept_unique": len(kept),
        "kept_sources": int(kept["source_id"].nunique()),
        "kept_reward_mean": round(float(kept["reward"].mean()), 4) if len(kept) else None,
        "train_mix": ic.train_mix,
    }
    if latest is not None:  # improve.accumulate: what the earlier Grow steps added to this one's
        selection["accumulated_from"] = grow_names[:-1]
        selection["kept_latest_only"] = latest
    if k_scores is not None:  # the share of the kept samples' tokens the loss learns (their mean token weight)
        weights = np.concatenate(token_weights([len(t) for t in k_scores], k_scores) or [np.zeros(0)])
        selection["token_weight_mean"] = round(float(weights.mean()), 4) if len(weights) else None
    return batches, selection


def _pair_batches(
    run: Run,
    grow_names: list[str],
    grow_summary: dict[str, Any],
    tau: float,
    ic: ImproveConfig,
    train_df: pd.DataFrame,
    rng: np.random.Generator,
) -> tuple[list[PairBatch], dict[str, Any]]:
    """A preference loss's data: pairs of the Grow step's samples (improve.selection.preference_pairs; every row is
    read: the rejected ones are below tau), mixed with data.train rows learnt with NLL (improve.train_mix of a
    batch)."""
    pc = ic.preference
    rows = read_grow(run.dir(grow_names[-1]), ["source_id", "source", "sample_index", "completion", "reward"])
    pairs = preference_pairs(rows, tau, pc.pairs, pc.margin)
    del rows
    p_src, p_c, p_r = pairs["source"].tolist(), pairs["chosen"].tolist(), pairs["rejected"].tolist()
    t_src, t_tgt = train_df["source"].tolist(), train_df["reference"].tolist()
    lengths = None
    if ic.group_by_length:
        lengths = (text_lengths(p_src, [c + r for c, r in zip(p_c, p_r)]), text_lengths(t_src, t_tgt))
    plan = mix_batches(len(pairs), len(train_df), ic.train_mix, ic.batch_size, ic.steps, rng, lengths)
    batches = [
        PairBatch(
            [p_src[j] for j in ki],
            [p_c[j] for j in ki],
            [p_r[j] for j in ki],
            [t_src[j] for j in ti],
            [t_tgt[j] for j in ti],
        )
        for ki, ti in plan
    ]

    def mean(col: pd.Series) -> float | None:
        return round(float(col.mean()), 4) if len(col) else None

    selection = {
        "tau": tau,
        "grow_rows": grow_summary["rows"],
        "pairs": len(pairs),
        "pair_sources": int(pairs["source_id"].nunique()),
        "chosen_reward_mean": mean(pairs["chosen_reward"]),
        "rejected_reward_mean": mean(pairs["rejected_reward"]),
        # what a summed log-likelihood may learn instead of quality: is the chosen one the longer?
        "chosen_chars_mean": mean(pairs["chosen"].str.len()),
        "rejected_chars_mean": mean(pairs["rejected"].str.len()),
        "train_mix": ic.train_mix,
    }
    return batches, selection
