"""Sparrow's rules (`reward.rules`): regex checks or learned classifiers, each scoring 1 - P(violation)."""

from __future__ import annotations

import re

import numpy as np

from rest.config import RewardConfig
from rest.rewards.kinds import code, rule_dependency
from rest.rewards.scorer import Scorer

LOAD_REWARD_MODEL = "rest.rewards.reward_model:load_reward_model"

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
            # the classifier loads as the `learned` kind's reward models do (torch only when a rule has one)
            rm = code(LOAD_REWARD_MODEL)(spec.model, device=device)
            BUILT[key] = Scorer(
                lambda sources, completions, references, logits_mb=None: (
                    1.0 - rm.score(sources, completions, logits_mb=logits_mb)
                ),
                takes_budget=True,
            )
    return BUILT[key]
