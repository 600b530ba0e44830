"""Rewards: the configured components, each a Scorer (rest/rewards/scorer.py), and their total.

    >>> from rest.config import RewardConfig
    >>> rc = RewardConfig(components={"chrf": 3.0, "exact_match": 1.0})
    >>> score_config(rc, ["1"], ["einz"], ["eins"])["reward_exact_match"]
    array([0.])

A component's kind (rest/config/components.py, the one table) says where its builder is; rest/rewards/kinds.py asks
the kinds what they check and what they add to a Grow step's lineage. `score_config` returns one array per
component (`reward_<name>`) and the total (`reward`), which is what the Grow shards store. Every component is
normalised to [0, 1] so that thresholds mean the same across rewards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rest.config import REWARD_COMPONENTS, RewardConfig, check_reward_names, column_of, spec_of
from rest.errors import RestError
from rest.rewards.kinds import built_key, code
from rest.rewards.metrics import format_valid, length_deviation
from rest.rewards.rules import rule
from rest.rewards.scorer import Scorer

# The scorers built in this process, by component, artifact ids, device, settings and identity: rest.caches clears them.
BUILT: dict[tuple, Scorer] = {}


def component(name: str, rc: RewardConfig, device: str = "cpu") -> Scorer:
    """The scorer of component `name` as configured by `rc`, built once per process (again when what it reads
    changes: a retrained reward model, an edited function file, its settings). A learned reward loads on `device`
    (a `device` setting: auto, cpu, cuda, cuda:N, mps)."""
    check_reward_names([name], rc)
    build = code(spec_of(name, rc).build)
    key = built_key(name, rc, device)
    if key not in BUILT:
        BUILT[key] = build(name, rc, device)
    return BUILT[key]


def named_component(
    name: str, rc: RewardConfig, learned: str | None, references: Sequence[str | None], device: str = "cpu"
) -> Scorer:
    """The scorer of built-in component `name` given on the command line (`rest eval --best-of-n K --reward NAME`),
    checked against the rows' `references` before anything is sampled; `learned` (--reward-model) or the run's
    reward.learned is the reward model of `learned`."""
    if name not in REWARD_COMPONENTS:
        raise RestError(f"--reward {name}: unknown; known: {', '.join(REWARD_COMPONENTS)}")
    missing = sum(r is None for r in references)
    if spec_of(name).needs_reference and missing:
        raise RestError(
            f"--reward {name} compares with the reference, but {missing} rows of --data have "
            "none: use --reward learned (a reward model reads only source and output)"
        )
    # RewardConfig.model_construct: `learned` may be missing here, and component() says so as a RestError
    return component(name, RewardConfig.model_construct(components={name: 1.0}, learned=learned or rc.learned), device)


def token_columns(rewards: Mapping[str, Any]) -> list[str]:
    """The per-token score columns (`reward_tokens_<name>`) among score_config's outputs."""
    return [k for k in rewards if k.startswith("reward_tokens_")]


def reward_names(rc: RewardConfig) -> list[str]:
    """The `reward_<name>` columns a reward config writes: its components (a function by its name), `rule_<name>`
    per rule, then `length` and `format` if set."""
    return (
        [column_of(name) for name in rc.components]
        + [f"rule_{name}" for name in rc.rules]
        + (["length"] if rc.length_penalty else [])
        + (["format"] if rc.format_regex else [])
    )


def score_config(
    rc: RewardConfig,
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    device: str = "cpu",
    columns: Mapping[str, Sequence] | None = None,
    logits_mb: int | None = None,
) -> dict[str, np.ndarray]:
    """Every component and the total: clip(weighted mean - length_penalty x reward_length, 0, 1) x reward_format,
    the weighted mean over the components and the rules (`reward_rule_<name>` = 1 - P(violation)): Sparrow's
    composite of a preference reward, rule models, a length penalty and a format check. A component that also
    scores each token (a seq2seq reward model) adds `reward_tokens_<name>`: per row, an array of its token scores.

    `columns` (`source_id` and the data's extra columns, one value per row) go to the components that take them
    (a user's function). A component may not apply to a row (NaN, a function's None): the weighted mean is then
    over the components that do apply, and a row none applies to gets 0.

    Each distinct (source, completion, reference) is scored once and its scores copied to its repeats: a policy
    that has learned its task samples the same completion many times out of N (on the embedded task most of the
    8), and every component is a function of those three (and of the row's columns, when one takes them).

    Weights are normalised, so the total stays in [0, 1]: {chrf: 3, exact_match: 1} is 0.75 chrF + 0.25 exact
    match. A learned reward scores on `device`, its passes within `logits_mb` MiB (the run's budget).
    `reward_length` is length_deviation (0 = as long as the reference), `reward_format` is format_valid: an output
    that does not match `format_regex` gets reward 0 whatever its components say.
    """
    scorers = {name: component(name, rc, device) for name in rc.components}  # built (or found) once per call
    takes_columns = any(scorer.takes_columns for scorer in scorers.values())
    columns = {k: list(v) for k, v in (columns or {}).items()} if takes_columns else {}
    if columns:
        keyed = [tuple(repr(v) for v in row) for row in zip(*columns.values())]
        keys = [(*k, c) for k, c in zip(zip(sources, completions, references), keyed)]
    else:
        keys = list(zip(sources, completions, references))
    first: dict[tuple, int] = {}
    rows: list[int] = []  # the first row of each distinct key
    inverse = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        j = first.setdefault(k, len(first))
        if j == len(rows):
            rows.append(i)
        inverse[i] = j
    if len(first) < len(keys):
        d_src, d_comp = [sources[i] for i in rows], [completions[i] for i in rows]
        d_ref = [references[i] for i in rows]
        d_cols = {k: [v[i] for i in rows] for k, v in columns.items()}
        scored = _score_rows(rc, scorers, d_src, d_comp, d_ref, device, d_cols, logits_mb)
        return {name: values[inverse] for name, values in scored.items()}
    return _score_rows(rc, scorers, sources, completions, references, device, columns, logits_mb)


def _score_rows(
    rc: RewardConfig,
    scorers: Mapping[str, Scorer],
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    device: str,
    columns: Mapping[str, Sequence] | None = None,
    logits_mb: int | None = None,
) -> dict[str, np.ndarray]:
    total_weight = float(sum(rc.components.values()) + sum(r.weight for r in rc.rules.values()))
    out: dict[str, np.ndarray] = {}
    total = np.zeros(len(completions), dtype=np.float64)
    missing = np.zeros(len(completions), dtype=np.float64)  # per row: the weight of components that do not apply
    for name, weight in rc.components.items():
        scorer = scorers[name]
        if scorer.tokens is not None:
            values, tokens = scorer.token_scores(sources, completions, references, logits_mb)
            out[f"reward_tokens_{name}"] = np.empty(len(tokens), dtype=object)
            out[f"reward_tokens_{name}"][:] = [t.astype(np.float32) for t in tokens]
        else:
            values = scorer(sources, completions, references, columns, logits_mb)
        out[f"reward_{column_of(name)}"] = values
        absent = np.isnan(values)
        if absent.any():
            missing += np.where(absent, weight, 0.0)
            values = np.where(absent, 0.0, values)
        total += (weight / total_weight) * values
    for name, spec in rc.rules.items():
        values = np.asarray(rule(name, rc, device)(sources, completions, references, None, logits_mb), dtype=np.float64)
        out[f"reward_rule_{name}"] = values
        total += (spec.weight / total_weight) * values
    if missing.any():  # the weighted mean over the components that apply; 0 where none does
        applied = total_weight - missing
        total = np.where(applied > 0, total * total_weight / np.where(applied > 0, applied, 1.0), 0.0)
    if rc.length_penalty:
        out["reward_length"] = length_deviation(completions, references)
        total = np.clip(total - rc.length_penalty * out["reward_length"], 0.0, 1.0)
    if rc.format_regex:
        out["reward_format"] = format_valid(completions, rc.format_regex)
        total = total * out["reward_format"]
    out["reward"] = total
    return out


def score(
    components: Mapping[str, float],
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    learned: str | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """score_config of a plain {component: weight} mapping (no length penalty, no format check)."""
    return score_config(
        RewardConfig(components=dict(components), learned=learned), sources, completions, references, device
    )
