"""The reward components a config may name: the one registry, which the config validates against without importing
the rewards (or torch), and rest/rewards/components.py builds from.

A component says whether it reads the reference (Grow sources may lack one otherwise), which RewardConfig fields
name an artifact it reads (checked before a run starts; their manifest ids are parents of the Grow steps it scores),
and where its builder is: `"module:function"`, imported the first time the component is used, called as
`build(name, reward_config, device)` and returning the scorer `(sources, completions, references) -> scores in [0, 1]`.

Adding a component: its builder (any module) and an entry here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    needs_reference: bool
    build: str  # "module:function"
    artifact_fields: tuple[str, ...] = ()  # RewardConfig fields holding artifact directories the scorer reads


_METRIC = "rest.rewards.components:metric_scorer"

REWARD_COMPONENTS: dict[str, ComponentSpec] = {
    "chrf": ComponentSpec("chrf", True, _METRIC),
    "bleu": ComponentSpec("bleu", True, _METRIC),
    "ter": ComponentSpec("ter", True, _METRIC),
    "exact_match": ComponentSpec("exact_match", True, _METRIC),
    "learned": ComponentSpec("learned", False, "rest.rewards.components:learned_scorer", artifact_fields=("learned",)),
}


def check_reward_names(names: Iterable[str]) -> None:
    """ValueError with a "did you mean" for a name that is not in REWARD_COMPONENTS."""
    for name in names:
        if name not in REWARD_COMPONENTS:
            close = difflib.get_close_matches(name, REWARD_COMPONENTS, n=1)
            hint = f" did you mean `{close[0]}`?" if close else ""
            raise ValueError(f"unknown reward {name!r}.{hint} Known rewards: {', '.join(REWARD_COMPONENTS)}")
