"""The kinds of reward component a config may name: the one table, which the config validates against without
importing the rewards (or torch), and rest/rewards/ builds, checks and traces from.

A kind says, torch-free, everything the rest of the pipeline needs to know about it:
- how a component of it is named: a built-in name (`chrf`, `math`), a name listed in a RewardConfig field
  (`named_in`: `reward.servers`, `reward.models`), or a reference (`module:function`, `path/to/file.py:function`);
- whether it reads the reference (Grow sources may lack one otherwise) and which data columns it reads;
- whether it is a verifier (its reward says right or wrong: the BC control compares accuracy on it);
- which RewardConfig fields name an artifact it reads (checked before a run; their manifest ids are parents of the
  Grow steps it scores) and which settings its scorer is built from (a scorer is built again when they change);
- where its code is, each as `"module:function"`, imported only when used: `build(name, rc, device) -> Scorer`
  (rest/rewards/scorer.py), `check(name, rc, splits)` before a run writes anything, and `identity(name, rc) ->
  dict`, what joins the key of every Grow step it scores (`key`: the key's field, e.g. the sha256 of a function's
  file, so an edited function is another step).

Adding a kind of reward: its module in rest/rewards/ (the builder, its check and identity), its entry here, and its
settings in the reward section of the config (rest/config/sections/reward.py). Nothing else names a kind:
tests/test_structure.py holds every module outside rest/rewards/ and rest/config/ to that.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    """A kind of reward component (see the module's docstring); `name` is the kind's, or a built-in's own name."""

    name: str
    needs_reference: bool
    build: str  # "module:function" -> (name, reward_config, device) -> Scorer
    artifact_fields: tuple[str, ...] = ()  # RewardConfig fields holding artifact directories the scorer reads
    columns: tuple[str, ...] = ()  # data columns the scorer reads (given as `columns=`), beyond source/reference
    settings: tuple[str, ...] = ()  # RewardConfig fields its builder reads: a scorer is built again when they change
    verifier: bool = False  # says right or wrong: the reward is the accuracy the BC control is compared on
    check: str | None = None  # "module:function" -> (name, reward_config, splits) -> None, raising a RestError
    identity: str | None = None  # "module:function" -> (name, reward_config) -> dict: joins the Grow key at `key`
    key: str | None = None  # the Grow key's field that holds the identities of this kind's components
    key_fields: tuple[str, ...] | None = None  # the fields of an identity in the key (None: all; the rest: recorded)
    named_in: str | None = None  # the RewardConfig field whose names are components of this kind


_METRIC = "rest.rewards.parallel:metric_scorer"

# The built-in components, by name.
REWARD_COMPONENTS: dict[str, ComponentSpec] = {
    "chrf": ComponentSpec("chrf", True, _METRIC),
    "bleu": ComponentSpec("bleu", True, _METRIC),
    "ter": ComponentSpec("ter", True, _METRIC),
    "exact_match": ComponentSpec("exact_match", True, _METRIC),
    "learned": ComponentSpec(
        "learned", False, "rest.rewards.reward_model:learned_scorer", artifact_fields=("learned",)
    ),
    # verifiable rewards (rest/rewards/verifiers.py): the final answer checked symbolically, a program run on tests
    "math": ComponentSpec("math", True, "rest.rewards.verifiers:math_scorer", verifier=True),
    "code": ComponentSpec(
        "code",
        False,
        "rest.rewards.verifiers:code_scorer",
        columns=("tests",),
        settings=("code",),
        verifier=True,
        check="rest.rewards.verifiers:check_code",
    ),
}

# The kinds a user brings by reference: a name listed in a RewardConfig field, or a function reference.
SERVER = ComponentSpec(
    "server",
    False,
    "rest.rewards.remote:server_scorer",
    settings=("servers",),
    named_in="servers",
)
MODEL = ComponentSpec(
    "model",
    False,
    "rest.rewards.pretrained:pretrained_scorer",
    settings=("models",),
    check="rest.rewards.pretrained:check_model_component",
    identity="rest.rewards.pretrained:model_identity_of",
    key="reward_models",
    named_in="models",
)
FUNCTION = ComponentSpec(
    "function",
    False,
    "rest.rewards.functions:function_scorer",
    settings=("timeout_s",),
    check="rest.rewards.functions:check_function_component",
    identity="rest.rewards.functions:function_identity",
    key="reward_code",
    key_fields=("function", "sha256"),
)
REFERENCE_KINDS: tuple[ComponentSpec, ...] = (SERVER, MODEL)  # checked in this order, then a function reference

_REFERENCE = re.compile(r"^(?P<target>[^:]+\.py|[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)$")


def is_function_reference(name: str) -> bool:
    """`module:function` or `path/to/file.py:function`: a user's reward function, not a registered component."""
    return ":" in name


def _named(rc: Any, kind: ComponentSpec) -> Iterable[str]:
    if rc is None or kind.named_in is None:
        return ()
    if isinstance(rc, Mapping):  # a config section's fields while pydantic validates it
        return rc.get(kind.named_in) or ()
    return getattr(rc, kind.named_in, None) or ()


def kind_of(name: str, rc: Any = None) -> ComponentSpec:
    """The kind of component `name` in reward config `rc` (a RewardConfig, or anything with its `servers` and
    `models` fields): a name listed in a kind's `named_in` field, a function reference, or a built-in."""
    for kind in REFERENCE_KINDS:
        if name in _named(rc, kind):
            return kind
    if is_function_reference(name):
        return FUNCTION
    return REWARD_COMPONENTS[name]


def spec_of(name: str, rc: Any = None) -> ComponentSpec:
    """The spec of component `name`: its kind's, under its own name."""
    kind = kind_of(name, rc)
    return kind if kind.name == name else dataclasses.replace(kind, name=name)


def column_of(name: str) -> str:
    """The name in its `reward_<name>` column: the function's name for a reference (`my.py:short` -> `short`)."""
    return name.rpartition(":")[2] if is_function_reference(name) else name


def is_verifier(components: Iterable[str], rc: Any = None) -> bool:
    """Whether every component says right or wrong (`math`, `code`): the reward is then an accuracy."""
    names = list(components)
    return bool(names) and all(kind_of(name, rc).verifier for name in names)


def check_reward_names(names: Iterable[str], rc: Any = None) -> None:
    """ValueError with a "did you mean" for a name that is no component (a built-in, a function reference, a name
    in a kind's `named_in` field of `rc`: a RewardConfig or the mapping of its fields), or for two components that
    would write the same `reward_<name>`."""
    columns: dict[str, str] = {}
    named = {n for kind in REFERENCE_KINDS for n in _named(rc, kind)}
    for name in names:
        if name in named:
            pass
        elif is_function_reference(name):
            if not _REFERENCE.match(name):
                raise ValueError(
                    f"{name!r} is not a function reference: write `package.module:function` or "
                    "`path/to/file.py:function`"
                )
        elif name not in REWARD_COMPONENTS:
            close = difflib.get_close_matches(name, REWARD_COMPONENTS, n=1)
            hint = f" did you mean `{close[0]}`?" if close else ""
            raise ValueError(
                f"unknown reward {name!r}.{hint} Known rewards: {', '.join(REWARD_COMPONENTS)}, a function of "
                "your own as `path/to/file.py:function` or `package.module:function`, a server named in "
                "reward.servers, or a reward model named in reward.models"
            )
        column = column_of(name)
        if column in columns:
            raise ValueError(
                f"{columns[column]!r} and {name!r} would both write reward_{column}; rename one of the functions"
            )
        columns[column] = name
