"""Sparrow's rules (`reward.rules`): regex checks or learned classifiers, each scoring 1 - P(violation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from rest.artifacts import manifests
from rest.config import RewardConfig
from rest.errors import RestError
from rest.rewards.scorer import Scorer

TRAIN_A_RULE = "train one with `rest reward train` (objective: classification on a 0/1 column, 1 = the rule is broken)"


def rule_dependency(name: str, rc: RewardConfig) -> list[dict[str, Any]]:
    """The verified manifest of rule `name`'s classifier ([] for a regex rule); a RestError says how to make one."""
    rule = rc.rules[name]
    if rule.model is None:
        return []
    key = f"reward.rules.{name}.model"
    manifest = manifests.require(Path(rule.model), manifests.REWARD_MODEL, key, TRAIN_A_RULE)
    objective = manifest.get("config", {}).get("objective")
    if objective != "classification":
        raise RestError(f"{key}: {rule.model} is a {objective} reward model; a rule needs P(violation): {TRAIN_A_RULE}")
    return [manifest]


# Rule scorers built in this process, by (regex, classifier id, device): rest.caches clears them.
BUILT: dict[tuple, Scorer] = {}


def rule(name: str, rc: RewardConfig, device: str = "cpu") -> Scorer:
    """Rule `name`'s scorer, 1 - P(violation) per output, built once per process (per classifier artifact id)."""
    spec = rc.rules[name]
    key = ("rule", spec.regex, *(m["id"] for m in rule_dependency(name, rc)), device if spec.model else None)
    if key not in BUILT:
        if spec.regex is not None:
            pattern = re.compile(spec.regex)
            BUILT[key] = Scorer(
                lambda sources, completions, references: np.array(
                    [0.0 if pattern.search(c) else 1.0 for c in completions], dtype=np.float64
                )
            )
        else:
            from rest.rewards.reward_model import load_reward_model

            rm = load_reward_model(spec.model, device=device)
            BUILT[key] = Scorer(lambda sources, completions, references: 1.0 - rm.score(sources, completions))
    return BUILT[key]
