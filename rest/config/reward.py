"""The `reward` section: the components and their weights, and the settings of each kind of component (servers,
pretrained models, the code sandbox, Sparrow's rules)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rest.config.base import IN_NO_KEY, Section
from rest.config.components import check_reward_names


class RuleConfig(Section):
    """One of Sparrow's rules: how likely an output breaks it. Exactly one of `regex` and `model`."""

    regex: str | None = Field(
        None,
        description="the output breaks the rule when this regex matches anywhere in it (re.search): "
        "P(violation) 0 or 1",
    )
    model: str | None = Field(
        None,
        description="a classifier made by `rest reward train` with objective: classification on a 0/1 column "
        "where 1 means the rule is broken: its output is P(violation) for (source, output)",
    )
    weight: float = Field(1.0, ge=0, description="weight of 1 - P(violation) beside the reward components' weights")

    @model_validator(mode="after")
    def _one_check(self) -> RuleConfig:
        if (self.regex is None) == (self.model is None):
            raise ValueError("a rule is either a `regex` or a `model` (a classifier's directory): give exactly one")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc}): {self.regex!r}") from None
        return self


class CodeConfig(Section):
    """The `code` reward: each completion runs against its row's `tests` in a sandbox (rest/rewards/sandbox.py)."""

    partial: bool = Field(False, description="score the share of the row's tests that pass; false: 1 only if all do")
    wall_s: float = Field(10.0, gt=0, description="seconds one completion's tests may take in all, then killed")
    cpu_s: int = Field(5, gt=0, description="CPU seconds per process (each test is one)")
    memory_mb: int = Field(512, gt=16, description="address space per process, MB")
    processes: int = Field(32, gt=1, description="processes the sandbox may have at once (a fork bomb stops here)")
    file_size_mb: int = Field(10, gt=0, description="the largest file a test may write, MB")
    workers: int | None = Field(
        None, ge=1, description="sandboxes at once; null: the cores (at most 8)", json_schema_extra=IN_NO_KEY
    )


class ServerConfig(Section):
    """A reward server: batches POSTed as JSON, one value per row back (rest/rewards/remote.py has the protocol)."""

    url: str = Field(description="http(s)://host:port/path the batches are POSTed to, e.g. http://127.0.0.1:8000/score")
    timeout_s: float = Field(
        60.0, gt=0, description="seconds one request may take before it is retried", json_schema_extra=IN_NO_KEY
    )
    retries: int = Field(
        3,
        ge=0,
        description="tries after the first (back-off 1, 2, 4 ... s); then the shard fails",
        json_schema_extra=IN_NO_KEY,
    )
    batch_size: int = Field(256, ge=1, description="rows per request", json_schema_extra=IN_NO_KEY)

    @field_validator("url")
    @classmethod
    def _is_http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"a reward server's url starts with http:// or https://, got {v!r}")
        return v


class PretrainedRMConfig(Section):
    """A pretrained reward model: any transformers sequence classifier with one output (rest/rewards/pretrained.py)."""

    model: str = Field(description="a local checkpoint directory or a hub id (the hub needs the network unless cached)")
    revision: str | None = Field(None, description="the hub revision (a commit, branch or tag); null: the default")
    output: Literal["sigmoid", "affine"] = Field(
        "sigmoid",
        description="how the raw score x becomes a reward in [0, 1]: sigmoid(scale x + shift), or affine: "
        "clip(scale x + shift, 0, 1)",
    )
    scale: float = Field(1.0, description="the map's scale")
    shift: float = Field(0.0, description="the map's shift")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="weights' dtype; null: the checkpoint's own"
    )
    max_tokens: int = Field(1024, ge=8, description="longest input in tokens (longer ones are cut at the end)")
    batch_size: int = Field(16, ge=1, description="rows per forward pass", json_schema_extra=IN_NO_KEY)


class RewardConfig(Section):
    """The reward: a weighted mean of named components, each in [0, 1].

    Components: chrf, bleu, ter (inverted: 1 - TER/100, floored at 0), exact_match, `learned` (a reward model,
    `reward.learned`), `math` (the final answer equals the reference's, symbolically), `code` (the completion passes
    its row's `tests` in a sandbox), and a function of your own, `path/to/file.py:function` or `package.module:function`
    (`fn(sources, completions, references, **columns)` -> one value in [0, 1] or None per row; its column is
    `reward_<function>`). Weights are normalised, so the total stays in [0, 1]: `{chrf: 3, exact_match: 1}` is
    0.75 chrF + 0.25 exact match. Sparrow's composite: `rules` add 1 - P(violation) each with its own weight to
    the same weighted mean, then the length penalty is subtracted and the format check multiplies.
    """

    @model_validator(mode="after")
    def _learned_has_model(self) -> RewardConfig:
        if "learned" in self.components and not self.learned:
            raise ValueError(
                "the `learned` component needs reward.learned: the directory `rest reward train` wrote, e.g. "
                "runs/rm-numbers"
            )
        return self

    servers: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ServerConfig] = Field(
        default_factory=dict,
        description="reward servers by name: {name: {url: ...}}; a component of that name (with its weight) is "
        "scored by POSTing batches to the url; `rest reward serve` serves any configured reward",
    )
    models: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], PretrainedRMConfig] = Field(
        default_factory=dict,
        description="pretrained reward models by name: {name: {model: PATH_OR_HUB_ID}}; a component of that name "
        "scores (prompt, completion) with it, through its chat template when it has one",
    )
    components: dict[str, float] = Field(default_factory=lambda: {"chrf": 1.0})
    learned: str | None = Field(
        None,
        description="a reward-model artifact made by `rest reward train` (its directory): what the `learned` "
        "component scores with; it reads (source, completion) only, so Grow sources need no reference",
    )
    length_penalty: float = Field(
        0.0,
        ge=0,
        le=1,
        description="subtract this x |len(output) - len(reference)| / len(reference) (chars, capped at 1); 0: off",
    )
    format_regex: str | None = Field(
        None, description="an output that does not fully match this regex gets reward 0 (e.g. '[a-zäöüß]+'); null: off"
    )
    code: CodeConfig = Field(default_factory=CodeConfig)
    timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="the longest one call of a reward function may take (seconds; a batch is a shard's distinct "
        "rows); past it the shard fails with an error and nothing is published. null: no limit",
        json_schema_extra=IN_NO_KEY,
    )
    rules: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], RuleConfig] = Field(
        default_factory=dict,
        description="Sparrow's rule models by name: {name: {regex: ... | model: DIR, weight: w}}; each writes "
        "reward_rule_<name> = 1 - P(violation), weighted into the total beside the components",
    )

    @field_validator("format_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc}): {v!r}") from None
        return v

    @field_validator("components")
    @classmethod
    def _valid_components(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        if not v:
            raise ValueError("needs at least one component, e.g. {chrf: 1.0}")
        check_reward_names(v, info.data)
        for name, weight in v.items():
            if weight < 0:
                raise ValueError(f"weight of {name!r} must be >= 0, got {weight}")
        if sum(v.values()) <= 0:
            raise ValueError("weights must not all be 0")
        return v
