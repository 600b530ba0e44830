"""Rewards: configured components `(sources, completions, references) -> scores in [0, 1]`, and their total.

    >>> from rest.config import RewardConfig
    >>> rc = RewardConfig(components={"chrf": 3.0, "exact_match": 1.0})
    >>> score_config(rc, ["1"], ["einz"], ["eins"])["reward_exact_match"]
    array([0.])

A component's spec (rest/config/components.py, the one registry) says where its builder is, whether it reads the
reference, and which artifacts it depends on: their ids join the parents of every Grow step scored with it, so a
shard can be traced to the reward model that scored it. `score_config` returns one array per component
(`reward_<name>`) and the total (`reward`), which is what the Grow shards store. Every component is normalised to
[0, 1] so that thresholds mean the same across rewards.

Adding a component: a builder `(name, reward config, device) -> scorer` (here or in a module of its own) and its
entry in rest/config/components.py. A learned reward loads on `device`, the device of the policy being scored.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rest.artifacts import manifests
from rest.config import RewardConfig, check_reward_names, column_of, is_function_reference, spec_of
from rest.errors import RestError
from rest.rewards.metrics import SENTENCE_METRICS, format_valid, length_deviation

# A scorer: (sources, completions, references) -> one score in [0, 1] per row (NaN: does not apply). One with
# `takes_columns` (a user's function) is also given the rows' other columns: `columns={name: values}`.
Reward = Callable[..., np.ndarray]

TRAIN_A_REWARD_MODEL = manifests.HOW_TO_MAKE[manifests.REWARD_MODEL]


def metric_scorer(name: str, rc: RewardConfig, device: str) -> Reward:
    """Sentence metric `name` (chrf, bleu, ter, exact_match) against the reference: see _in_parallel."""
    return _in_parallel(name)


# ---------------------------------------------------------------------------------------------------------------
# A sentence metric over many rows, in processes: sacrebleu is pure Python, one core per process.

# Below this many characters (completions + references) a metric runs in this process: a helper process costs
# ~0.35 s to start (Python, numpy, sacrebleu), more than it saves on less. 400k characters is about 13k rows of the
# embedded task, ~1.3 s of chrF on one core; the default run's shards (a few hundred distinct rows) never reach it.
PARALLEL_MIN_CHARS = 400_000

# The extra share of the rows this process scores itself while the helpers start (for 2 processes: 55%).
HEAD_START = 0.05

# A helper reads its whole input before it imports anything, so the parent's write never waits for the imports.
_WORKER = "import sys; data = sys.stdin.buffer.read(); from rest.rewards.metrics import serve_chunk; serve_chunk(data)"


def scoring_processes() -> int:
    """How many processes a large metric call uses: $REST_SCORE_PROCESSES, else the cores this process may run on
    (at most 8); 1 inside a daemonic process (a Dask worker), whose children would be orphaned with it."""
    if multiprocessing.current_process().daemon:
        return 1
    wanted = os.environ.get("REST_SCORE_PROCESSES")
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise RestError(
                f"REST_SCORE_PROCESSES={wanted!r}: give a whole number of processes (1 turns scoring in parallel off)"
            ) from None
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _in_parallel(name: str) -> Reward:
    """Sentence metric `name` (rest.rewards.metrics.SENTENCE_METRICS), scored over contiguous chunks by this process and
    `scoring_processes() - 1` helper processes (`python -c`, so nothing of the caller's main module is re-run,
    unlike multiprocessing's spawn) when the rows are large enough to pay for it. The same numbers either way."""
    metric = SENTENCE_METRICS[name]

    def scored(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
        processes = scoring_processes()
        chars = sum(map(len, completions)) + sum(len(r) for r in references if r is not None)
        if processes < 2 or chars < PARALLEL_MIN_CHARS:
            return metric(sources, completions, references)
        # This process starts on its chunk at once, a helper ~0.35 s later (its imports): this one takes a little more.
        first = min(1.0, 1.0 / processes + HEAD_START)
        cuts = np.concatenate([[0], np.linspace(first * len(completions), len(completions), processes)]).astype(int)
        chunks = [
            (list(sources[a:b]) if len(sources) else [], list(completions[a:b]), list(references[a:b]))
            for a, b in zip(cuts[:-1], cuts[1:])
        ]
        helpers: list[tuple[subprocess.Popen, Any]] = []
        try:
            for chunk in chunks[1:]:
                # stderr to a file: a helper that warns a lot must not block on a full pipe nobody reads yet
                err = tempfile.TemporaryFile()
                helper = subprocess.Popen(
                    [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
                )
                helpers.append((helper, err))
                helper.stdin.write(pickle.dumps((name, chunk)))  # type: ignore[union-attr]
                helper.stdin.close()  # type: ignore[union-attr]
            parts = [metric(*chunks[0])]
            for helper, err in helpers:
                out = helper.stdout.read()  # type: ignore[union-attr]
                if helper.wait() != 0:
                    err.seek(0)
                    tail = err.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"a scoring process ended with exit code {helper.returncode}: {tail}")
                status, value = pickle.loads(out)
                if status == "error":
                    raise value
                parts.append(value)
        finally:
            for helper, err in helpers:  # on any error (or Ctrl-C) here: no helper outlives the call
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
                helper.stdout.close()  # type: ignore[union-attr]
                err.close()
        return np.concatenate(parts)

    scored.metric = metric  # type: ignore[attr-defined]
    return scored


def learned_scorer(name: str, rc: RewardConfig, device: str) -> Reward:
    """The reward model at reward.learned, loaded on `device`."""
    # Imported here, not at the top: torch and transformers load only when a learned reward is used.
    from rest.rewards.reward_model import load_reward_model

    rm = load_reward_model(rc.learned, device=device)

    def scored(sources, completions, references):
        return rm.score(sources, completions)

    if hasattr(rm, "score_tokens"):  # a seq2seq reward model also scores each token: reward_tokens_<name>
        scored.with_tokens = lambda sources, completions, references: rm.score_tokens(sources, completions)  # type: ignore[attr-defined]
    return scored


def _artifacts(name: str, rc: RewardConfig) -> list[tuple[str, str | None]]:
    """(config key, artifact directory) of every artifact component `name` reads."""
    return [(f"reward.{f}", getattr(rc, f)) for f in spec_of(name, rc.servers, rc.models).artifact_fields]


def _builder(name: str, rc: RewardConfig) -> Callable[[str, RewardConfig, str], Reward]:
    module, _, function = spec_of(name, rc.servers, rc.models).build.partition(":")
    return getattr(importlib.import_module(module), function)


# ---------------------------------------------------------------------------------------------------------------
# Sparrow's rules: regex checks or learned classifiers, each scoring 1 - P(violation)

TRAIN_A_RULE = "train one with `rest reward train` (objective: classification on a 0/1 column, 1 = the rule is broken)"


def _rule_dependency(name: str, rc: RewardConfig) -> list[dict[str, Any]]:
    rule = rc.rules[name]
    if rule.model is None:
        return []
    key = f"reward.rules.{name}.model"
    manifest = manifests.require(Path(rule.model), manifests.REWARD_MODEL, key, TRAIN_A_RULE)
    objective = manifest.get("config", {}).get("objective")
    if objective != "classification":
        raise RestError(f"{key}: {rule.model} is a {objective} reward model; a rule needs P(violation): {TRAIN_A_RULE}")
    return [manifest]


def rule(name: str, rc: RewardConfig, device: str = "cpu") -> Reward:
    """Rule `name`'s scorer, 1 - P(violation) per output, built once per process (per classifier artifact id)."""
    spec = rc.rules[name]
    key = ("rule", spec.regex, *(m["id"] for m in _rule_dependency(name, rc)), device if spec.model else None)
    if key not in _BUILT:
        if spec.regex is not None:
            pattern = re.compile(spec.regex)
            _BUILT[key] = lambda sources, completions, references: np.array(
                [0.0 if pattern.search(c) else 1.0 for c in completions], dtype=np.float64
            )
        else:
            from rest.rewards.reward_model import load_reward_model

            rm = load_reward_model(spec.model, device=device)
            _BUILT[key] = lambda sources, completions, references: 1.0 - rm.score(sources, completions)
    return _BUILT[key]


def needs_reference(rc: RewardConfig) -> bool:
    """False when every component reads only (source, completion): Grow sources may then lack references."""
    return any(spec_of(name, rc.servers, rc.models).needs_reference for name in rc.components) or bool(
        rc.length_penalty
    )


def _dependencies(name: str, rc: RewardConfig) -> list[dict[str, Any]]:
    out = []
    for key, path in _artifacts(name, rc):
        if not path:
            raise RestError(
                f"the `{name}` reward needs {key} (or --reward-model): the directory of a reward model; "
                f"{TRAIN_A_REWARD_MODEL}"
            )
        out.append(manifests.require(Path(path), manifests.REWARD_MODEL, key, TRAIN_A_REWARD_MODEL))
    return out


def artifact_dependencies(rc: RewardConfig) -> list[dict[str, Any]]:
    """The verified manifests of every artifact the configured components read (a RestError says how to make
    a missing one): what a run checks before it starts and what Grow lists among its parents."""
    return [m for name in rc.components for m in _dependencies(name, rc)] + [
        m for name in rc.rules for m in _rule_dependency(name, rc)
    ]


_BUILT: dict[tuple, Reward] = {}


def component(name: str, rc: RewardConfig, device: str = "cpu") -> Reward:
    """The scorer of component `name` as configured by `rc`, built once per process (per artifact id and device for
    a component that reads an artifact, so a retrained reward model is picked up). A learned reward loads on
    `device` (a `device` setting: auto, cpu, cuda, cuda:N, mps)."""
    check_reward_names([name], rc.servers, rc.models)
    key = (name, *(m["id"] for m in _dependencies(name, rc)), device if _artifacts(name, rc) else None)
    key += tuple(
        json.dumps(rc.model_dump(mode="json")[f], sort_keys=True) for f in spec_of(name, rc.servers, rc.models).settings
    )
    if is_function_reference(name):  # an edited file is a new scorer
        from rest.rewards.functions import code_identity

        key += (code_identity(name)["sha256"],)
    elif name in rc.models:  # so is a checkpoint written again in the same directory
        from rest.rewards.pretrained import model_identity

        key += (model_identity(name, rc.models[name])["sha256"], device)
    if key not in _BUILT:
        _BUILT[key] = _builder(name, rc)(name, rc, device)
    return _BUILT[key]


def check_token_scores(name: str, rc: RewardConfig, key: str) -> None:
    """RestError unless component `name` scores each token (its artifact is a reward model trained with objective:
    seq2seq): what config key `key` (improve.token_weights) reads from the Grow shards."""
    specs = [Path(path) / "reward.json" for _, path in _artifacts(name, rc) if path]
    objectives = [json.loads(spec.read_text()).get("objective") for spec in specs if spec.is_file()]
    if "seq2seq" not in objectives:
        made = f"a reward model trained with objective: {objectives[0]}" if objectives else f"the {name} component"
        raise RestError(
            f"{key}: {name} has no per-token scores ({made} gives one number per sample); only a reward "
            f"model trained with objective: seq2seq (reward.learned) scores tokens. Set {key}: null, or "
            "train one: rest reward train --config configs/reward-numbers-seq2seq.yaml"
        )


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


def code_identities(rc: RewardConfig) -> list[dict[str, str]]:
    """The reference, file and file sha256 of every function component: part of a Grow step's key."""
    from rest.rewards.functions import code_identity

    return [code_identity(name) for name in rc.components if is_function_reference(name)]


def model_identities(rc: RewardConfig) -> list[dict[str, Any]]:
    """The path or hub id, revision and weights' sha256 of every pretrained reward model the components use."""
    if not any(name in rc.models for name in rc.components):
        return []
    from rest.rewards.pretrained import model_identity

    return [model_identity(name, rc.models[name]) for name in rc.components if name in rc.models]


def takes_columns(rc: RewardConfig) -> bool:
    """Whether a component of `rc` reads the rows' other columns (a function of the user's, `code`'s tests)."""
    return any(
        is_function_reference(name) or name in rc.servers or spec_of(name, rc.servers, rc.models).columns
        for name in rc.components
    )


def score_config(
    rc: RewardConfig,
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    device: str = "cpu",
    columns: Mapping[str, Sequence] | None = None,
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
    match. A learned reward scores on `device`. `reward_length` is length_deviation (0 = as long as the
    reference), `reward_format` is format_valid: an
    output that does not match `format_regex` gets reward 0 whatever its components say.
    """
    columns = {k: list(v) for k, v in (columns or {}).items()} if takes_columns(rc) else {}
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
        d_src, d_comp, d_ref = ([seq[i] for i in rows] for seq in (sources, completions, references))
        d_cols = {k: [v[i] for i in rows] for k, v in columns.items()}
        scored = _score_rows(rc, d_src, d_comp, d_ref, device, d_cols)
        return {name: values[inverse] for name, values in scored.items()}
    return _score_rows(rc, sources, completions, references, device, columns)


def _score_rows(
    rc: RewardConfig,
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    device: str,
    columns: Mapping[str, Sequence] | None = None,
) -> dict[str, np.ndarray]:
    total_weight = float(sum(rc.components.values()) + sum(r.weight for r in rc.rules.values()))
    out: dict[str, np.ndarray] = {}
    total = np.zeros(len(completions), dtype=np.float64)
    missing = np.zeros(len(completions), dtype=np.float64)  # per row: the weight of components that do not apply
    for name, weight in rc.components.items():
        scorer = component(name, rc, device)
        if hasattr(scorer, "with_tokens"):
            values, tokens = scorer.with_tokens(sources, completions, references)
            out[f"reward_tokens_{name}"] = np.empty(len(tokens), dtype=object)
            out[f"reward_tokens_{name}"][:] = [t.astype(np.float32) for t in tokens]
        elif getattr(scorer, "takes_columns", False):
            values = scorer(sources, completions, references, columns=columns)
        else:
            values = scorer(sources, completions, references)
        out[f"reward_{column_of(name)}"] = values
        absent = np.isnan(values)
        if absent.any():
            missing += np.where(absent, weight, 0.0)
            values = np.where(absent, 0.0, values)
        total += (weight / total_weight) * values
    for name, spec in rc.rules.items():
        values = np.asarray(rule(name, rc, device)(sources, completions, references), dtype=np.float64)
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
