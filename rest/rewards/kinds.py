"""What the kinds of reward component know (the table in rest/config/components.py), asked of them in one place:
the checks before a run writes anything, and the lineage of a Grow step.

    check_rewards(rc, scored)   # RestError naming the component, the split and the fix
    lineage(rc)                 # parents, key and record of every Grow step this reward scores

A kind's `check` and `identity` are `"module:function"` strings, imported here when a component of that kind is
configured: a run with only built-in metrics imports no torch, no transformers and no user code to be checked.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rest.artifacts import manifests
from rest.config import RewardConfig, spec_of
from rest.errors import RestError

TRAIN_A_REWARD_MODEL = manifests.HOW_TO_MAKE[manifests.REWARD_MODEL]
TRAIN_A_RULE = "train one with `rest reward train` (objective: classification on a 0/1 column, 1 = the rule is broken)"


def code(reference: str) -> Callable[..., Any]:
    """The function a kind's `"module:function"` names."""
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def needs_reference(rc: RewardConfig) -> bool:
    """False when every component reads only (source, completion): Grow sources may then lack references."""
    return any(spec_of(name, rc).needs_reference for name in rc.components) or bool(rc.length_penalty)


def artifacts(name: str, rc: RewardConfig) -> list[tuple[str, str | None]]:
    """(config key, artifact directory) of every artifact component `name` reads."""
    return [(f"reward.{f}", getattr(rc, f)) for f in spec_of(name, rc).artifact_fields]


# (config key, artifact directory, how to make one, what to say when the key is not set)
Needed = tuple[str, "str | None", str, str]


def _component_needs(name: str, rc: RewardConfig) -> list[Needed]:
    missing = "the `{name}` reward needs {key} (or --reward-model): the directory of a reward model; {how}"
    return [
        (key, path, TRAIN_A_REWARD_MODEL, missing.format(name=name, key=key, how="{how}"))
        for key, path in artifacts(name, rc)
    ]


def _rule_needs(name: str, rc: RewardConfig) -> list[Needed]:
    model = rc.rules[name].model
    return [] if model is None else [(f"reward.rules.{name}.model", model, TRAIN_A_RULE, "")]


def _require(needed: list[Needed]) -> list[dict[str, Any]]:
    """The verified manifest of each needed artifact; a rule's must be a classifier (it scores P(violation))."""
    out = []
    for key, path, how, missing in needed:
        if not path:
            raise RestError(missing.format(how=how))
        manifest = manifests.require(Path(path), manifests.REWARD_MODEL, key, how)
        objective = manifest.get("config", {}).get("objective")
        if how == TRAIN_A_RULE and objective != "classification":
            raise RestError(f"{key}: {path} is a {objective} reward model; a rule needs P(violation): {TRAIN_A_RULE}")
        out.append(manifest)
    return out


def dependencies(name: str, rc: RewardConfig) -> list[dict[str, Any]]:
    """The verified manifests of the artifacts component `name` reads."""
    return _require(_component_needs(name, rc))


def rule_dependency(name: str, rc: RewardConfig) -> list[dict[str, Any]]:
    """The verified manifest of rule `name`'s classifier ([] for a regex rule); a RestError says how to make one."""
    return _require(_rule_needs(name, rc))


def artifact_dependencies(rc: RewardConfig) -> list[dict[str, Any]]:
    """The verified manifests of every artifact the configured components and rules read (a RestError says how
    to make a missing one): what a run checks before it starts and what Grow lists among its parents."""
    needed = [n for name in rc.components for n in _component_needs(name, rc)]
    return _require(needed + [n for name in rc.rules for n in _rule_needs(name, rc)])


def identity(name: str, rc: RewardConfig) -> dict[str, Any] | None:
    """What identifies component `name` beyond its config (a function's code, a model's weights), or None."""
    spec = spec_of(name, rc)
    return code(spec.identity)(name, rc) if spec.identity else None


def built_key(name: str, rc: RewardConfig, device: str) -> tuple:
    """What a built scorer of component `name` depends on: its identity (an edited function file, a checkpoint
    written again), its settings, the device and the ids of the artifacts it reads (a retrained reward model)."""
    spec = spec_of(name, rc)
    key = (name, json.dumps(identity(name, rc), sort_keys=True), device)
    if spec.settings:
        dumped = rc.model_dump(mode="json")
        key += tuple(json.dumps(dumped[f], sort_keys=True) for f in spec.settings)
    return key + tuple(m["id"] for m in dependencies(name, rc))


@dataclass(frozen=True)
class RewardLineage:
    """What a Grow step inherits from its reward: `parents` (the ids of the artifacts it reads), `key` (what joins
    the step's key and id: each kind's identities under its `key` field, e.g. `reward_code`, `reward_models`),
    `record` (what the manifest also records: a function's file), `needs_reference`."""

    parents: list[str] = field(default_factory=list)
    key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    record: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    needs_reference: bool = True


def lineage(rc: RewardConfig) -> RewardLineage:
    """The lineage of every Grow step scored with `rc` (see RewardLineage)."""
    needs = needs_reference(rc)
    key: dict[str, list[dict[str, Any]]] = {}
    record: dict[str, list[dict[str, Any]]] = {}
    for name in rc.components:
        spec = spec_of(name, rc)
        ident = identity(name, rc)
        if ident is None or spec.key is None:
            continue
        record.setdefault(spec.key, []).append(ident)
        key.setdefault(spec.key, []).append(
            ident if spec.key_fields is None else {k: ident[k] for k in spec.key_fields}
        )
    record = {k: v for k, v in record.items() if v != key[k]}  # only what the key leaves out
    parents = [m["id"] for m in artifact_dependencies(rc)]
    return RewardLineage(parents, key, record, needs)


def check_rewards(rc: RewardConfig, scored: Mapping[str, Sequence[str]], token_weights: str | None = None) -> None:
    """Every component can score what it will be given, said before a run writes anything: its artifacts verify,
    the columns it reads are in every split it scores (`scored`: {where: the split's columns}), and its kind's
    own check passes (a function imports and takes the columns; a pretrained model has one output; `code`'s
    sandbox works here). `token_weights` (improve.token_weights) must name a component that scores tokens."""
    artifact_dependencies(rc)
    for name in rc.components:
        spec = spec_of(name, rc)
        for where, available in scored.items():
            if missing := [c for c in spec.columns if c not in available]:
                raise RestError(
                    f"reward.components: `{name}` reads column(s) {', '.join(missing)}, which {where} lacks (its "
                    f"columns: {', '.join(available)}); add them to that split, or choose another reward"
                )
        if spec.check:
            code(spec.check)(name, rc, scored)
    if token_weights is not None:
        check_token_scores(token_weights, rc, "improve.token_weights")


def check_token_scores(name: str, rc: RewardConfig, key: str) -> None:
    """RestError unless component `name` scores each token (its artifact is a reward model trained with objective:
    seq2seq): what config key `key` (improve.token_weights) reads from the Grow shards."""
    from rest.rewards.reward_objectives import RM_OBJECTIVES  # torch: only when improve.token_weights is set

    specs = [Path(path) / "reward.json" for _, path in artifacts(name, rc) if path]
    objectives = [json.loads(spec.read_text()).get("objective") for spec in specs if spec.is_file()]
    if not any(o in RM_OBJECTIVES and RM_OBJECTIVES[o].head == "seq2seq" for o in objectives):
        made = f"a reward model trained with objective: {objectives[0]}" if objectives else f"the {name} component"
        raise RestError(
            f"{key}: {name} has no per-token scores ({made} gives one number per sample); only a reward "
            f"model trained with objective: seq2seq (reward.learned) scores tokens. Set {key}: null, or "
            "train one: rest reward train --config configs/reward-numbers-seq2seq.yaml"
        )
