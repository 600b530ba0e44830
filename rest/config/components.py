"""The reward components a config may name: the one registry, which the config validates against without importing
the rewards (or torch), and rest/rewards/components.py builds from.

A component says whether it reads the reference (Grow sources may lack one otherwise), which RewardConfig fields
name an artifact it reads (checked before a run starts; their manifest ids are parents of the Grow steps it scores),
and where its builder is: `"module:function"`, imported the first time the component is used, called as
`build(name, reward_config, device)` and returning the scorer `(sources, completions, references) -> scores in [0, 1]`.

Adding a component: its builder (any module) and an entry here. A user's own function needs no entry: a component
named `module:function` or `path/to/file.py:function` is one (rest/rewards/functions.py); its column is
`reward_<function>`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    needs_reference: bool
    build: str  # "module:function"
    artifact_fields: tuple[str, ...] = ()  # RewardConfig fields holding artifact directories the scorer reads
    columns: tuple[str, ...] = ()  # data columns the scorer reads (given as `columns=`), beyond source/reference
    settings: tuple[str, ...] = ()  # RewardConfig fields its builder reads: a scorer is built again when they change


_METRIC = "rest.rewards.components:metric_scorer"

REWARD_COMPONENTS: dict[str, ComponentSpec] = {
    "chrf": ComponentSpec("chrf", True, _METRIC),
    "bleu": ComponentSpec("bleu", True, _METRIC),
    "ter": ComponentSpec("ter", True, _METRIC),
    "exact_match": ComponentSpec("exact_match", True, _METRIC),
    "learned": ComponentSpec("learned", False, "rest.rewards.components:learned_scorer", artifact_fields=("learned",)),
    # verifiable rewards (rest/rewards/verifiers.py): the final answer checked symbolically, a program run on tests
    "math": ComponentSpec("math", True, "rest.rewards.verifiers:math_scorer"),
    "code": ComponentSpec("code", False, "rest.rewards.verifiers:code_scorer", columns=("tests",), settings=("code",)),
}


_FUNCTION = ComponentSpec("function", False, "rest.rewards.functions:function_scorer", settings=("timeout_s",))
_REFERENCE = re.compile(r"^(?P<target>[^:]+\.py|[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)$")


def is_function_reference(name: str) -> bool:
    """`module:function` or `path/to/file.py:function`: a user's reward function, not a registered component."""
    return ":" in name


_SERVER = ComponentSpec("server", False, "rest.rewards.remote:server_scorer", settings=("servers",))
_MODEL = ComponentSpec("model", False, "rest.rewards.pretrained:pretrained_scorer", settings=("models",))


def spec_of(name: str, servers: Iterable[str] = (), models: Iterable[str] = ()) -> ComponentSpec:
    """The spec of a registered component, of a function reference (it reads references only if it wants), of a
    reward server named in `reward.servers` or of a pretrained reward model named in `reward.models` (`servers`,
    `models`: those names)."""
    if name in servers:
        return ComponentSpec(name, _SERVER.needs_reference, _SERVER.build, settings=_SERVER.settings)
    if name in models:
        return ComponentSpec(name, _MODEL.needs_reference, _MODEL.build, settings=_MODEL.settings)
    if is_function_reference(name):
        return ComponentSpec(name, _FUNCTION.needs_reference, _FUNCTION.build, settings=_FUNCTION.settings)
    return REWARD_COMPONENTS[name]


def column_of(name: str) -> str:
    """The name in its `reward_<name>` column: the function's name for a reference (`my.py:short` -> `short`)."""
    return name.rpartition(":")[2] if is_function_reference(name) else name


def check_reward_names(names: Iterable[str], servers: Iterable[str] = (), models: Iterable[str] = ()) -> None:
    """ValueError with a "did you mean" for a name that is neither in REWARD_COMPONENTS, nor a function reference,
    nor a reward server's name (`servers`), or for two components that would write the same `reward_<name>`."""
    columns: dict[str, str] = {}
    named = set(servers) | set(models)
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
