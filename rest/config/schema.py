"""The run config's schema: one typed section per stage (data, model, bc, grow, reward, improve, eval, ...).

Every field says what it means, its unit, its default and a rule of thumb; the descriptions are also the Prefect UI's
form. Rules that span sections live in `RunConfig._cross_stage`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rest.config.components import check_reward_names

# A field marked IN_NO_KEY changes nothing an artifact holds (how the work is spread, where it runs, how a training
# step is computed, where it is tracked): it is in no artifact's key, and a run may be resumed with it changed.
IN_NO_KEY: dict[str, Any] = {"in_key": False}
# The one lineage rule for a field added after runs were made: it stays out of the key while it holds its default
# (so those runs' artifacts keep their ids) and joins it once set. Mark every new keyed field with it; a field that
# only acts with another (bc.patience, with bc.valid_every) follows that one: in_key_when_set_by(sibling).
IN_KEY_WHEN_SET: dict[str, Any] = {"in_key": "when_set"}


def in_key_when_set_by(switch: str) -> dict[str, Any]:
    """IN_KEY_WHEN_SET, decided by the sibling field `switch`: in the key while `switch` is set."""
    return {"in_key": "when_set", "switch": switch}


def in_key(field: Any) -> bool:
    """Whether a config field is part of the key of the artifacts its section makes (when set, for IN_KEY_WHEN_SET)."""
    extra = field.json_schema_extra
    return not isinstance(extra, dict) or extra.get("in_key", True) is not False


def in_key_when_set(field: Any) -> str | None:
    """For a field marked IN_KEY_WHEN_SET, the field whose value decides (itself: ""; a sibling's name); else None."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("in_key") == "when_set":
        return extra.get("switch", "")
    return None


def unkeyed_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys marked IN_NO_KEY under `model` (a marked section: every key under it)."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if not in_key(field):
            out.append(prefix + name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(unkeyed_keys(ann, prefix + name + "."))
    return out


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SPLITS = ("train", "pool", "valid", "test")
OUR_COLUMNS = ("source", "reference", "source_id", "messages")


class DataConfig(Section):
    """Where each split lives: a Parquet, JSONL, JSON or CSV file, a directory of Parquet files, or a `datasets`
    hub id (`name`, `name:split` or `name:config:split`).

    Columns: `source` (the model input) or `messages` (a conversation: a list of {role, content}; a last assistant
    turn is the reference), `reference` (the wanted output; may be missing in `pool` when the reward needs no
    reference), optional `source_id` (stable row id; made from the row number when absent). `columns` maps these
    names to the file's; every other column is kept (rewards read them, Grow's shards carry them).
    """

    columns: dict[str, Any] = Field(
        {},
        description="our column names -> the file's, for every split ({source: question, reference: answer}) "
        "and/or per split ({test: {source: problem}}); ours are source, reference, source_id, messages",
    )

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, Any]) -> dict[str, Any]:
        def check(mapping: dict, where: str) -> None:
            for ours, theirs in mapping.items():
                if ours in SPLITS and where == "data.columns":
                    if not isinstance(theirs, dict):
                        raise ValueError(f"data.columns.{ours} is a split: give it a mapping such as {{source: q}}")
                    check(theirs, f"data.columns.{ours}")
                    continue
                if ours not in OUR_COLUMNS:
                    raise ValueError(
                        f"{where}: {ours!r} is not one of our columns ({', '.join(OUR_COLUMNS)}) nor a split "
                        f"({', '.join(SPLITS)}); map ours to yours: {{source: question}}"
                    )
                if not isinstance(theirs, str) or not theirs:
                    raise ValueError(f"{where}.{ours}: the file's column name, a string (got {theirs!r})")

        check(v, "data.columns")
        return v

    def columns_for(self, split: str) -> dict[str, str]:
        """The mapping (ours -> the file's) of one split: the shared entries, overridden by the split's own."""
        shared = {k: v for k, v in self.columns.items() if k not in SPLITS}
        return {**shared, **self.columns.get(split, {})}

    train: str = Field("data/numbers/train.parquet", description="labelled pairs D for BC and for mixing into Improve")
    pool: str | None = Field(
        "data/numbers/pool.parquet",
        description="sources Grow samples from; their references feed the reward only, never training targets",
    )
    valid: str = Field("data/numbers/valid.parquet", description="model selection: every policy is evaluated here")
    test: str = Field("data/numbers/test.parquet", description="reported once, for policy-0 and the best policy")
    grow_on: Literal["pool", "train", "train+pool"] = Field(
        "pool", description="which sources Grow samples for; ReST grows on the sources of D (`train`) or a pool"
    )


# `device`: auto (a GPU when torch sees one), cpu, cuda, cuda:N, mps.
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"


class ModelConfig(Section):
    """The policy. Either a pretrained model (`pretrained`: a local path or hub id, loaded with from_pretrained)
    or one built from scratch from a transformers config file (`architecture`) with a BPE tokenizer trained on
    `data.train`. Encoder-decoder and decoder-only models both work; which one is read from the model config.
    """

    pretrained: str | None = Field(None, description="from_pretrained path or hub id; overrides architecture")
    architecture: str = Field(
        "configs/models/mbart-2.6m.json",
        description="transformers config JSON (needs model_type) for a model trained from scratch; default: a "
        "2.6M-parameter pre-LN encoder-decoder (mbart)",
    )
    vocab_size: int = Field(128, ge=16, description="BPE vocabulary of the tokenizer trained from scratch")
    prompt_template: str = Field(
        "{source} =",
        description="decoder-only only: the prompt the completion follows; must contain {source}",
    )
    chat_template: str | None = Field(
        None,
        description="decoder-only: prompts rendered by a chat template (the source as the user turn, or the "
        "`messages` conversation; add_generation_prompt), the completion the assistant's reply. `tokenizer`: the "
        "tokenizer's own; a path to a Jinja file: that template (also saved with every policy); `none`: plain "
        "prompt_template; null (unset): prompt_template, with a warning when the tokenizer has a template",
    )
    system_prompt: str | None = Field(None, description="with a chat template: a system turn before each prompt")
    chat_template_kwargs: dict[str, Any] = Field(
        {}, description="extra variables the chat template reads, e.g. {enable_thinking: false}"
    )
    max_source_tokens: int = Field(32, ge=1, description="sources are truncated to this many tokens")
    max_target_tokens: int = Field(48, ge=1, description="training targets are truncated to this many tokens")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="the weights' dtype where a published policy samples or is evaluated (Grow, `rest eval`, "
        "best-of-N); training keeps float32 weights and uses bc/improve.precision",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_source(cls, v: str) -> str:
        if "{source}" not in v:
            raise ValueError(f"must contain '{{source}}', got {v!r}")
        return v

    @property
    def chat(self) -> bool:
        """Whether prompts are rendered by a chat template."""
        return self.chat_template not in (None, "none")

    @model_validator(mode="after")
    def _chat_settings(self) -> ModelConfig:
        if not self.chat and (self.system_prompt is not None or self.chat_template_kwargs):
            raise ValueError(
                "model.system_prompt and model.chat_template_kwargs need a chat template: set model.chat_template "
                "(tokenizer, or a .jinja file)"
            )
        return self


class OptimFields(Section):
    """Optimiser settings shared by BC and Improve (AdamW, linear warm-up then cosine decay to 10%)."""

    steps: int = Field(400, ge=0, description="optimiser steps; 0 skips training")
    batch_size: int = Field(32, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate; ~1e-3 from scratch, ~1e-5..1e-4 for pretrained")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps (unless warmup_fraction is set)")
    warmup_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="warm-up as a fraction of `steps` (0.1: the first 10%); set, it replaces warmup_steps, so the "
        "warm-up follows when you change steps",
    )
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps for a schedule of `total_steps`."""
        if self.warmup_fraction is not None:
            return round(self.warmup_fraction * total_steps)
        return self.warmup_steps


class LoraConfig(Section):
    """A LoRA adapter (peft) trained instead of the whole model; merged into the weights when the step ends, so a
    published policy stays a plain `save_pretrained` directory."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names to adapt (e.g. [q_proj, v_proj]), or all-linear: every linear layer but the output "
        "head",
    )


# How a training step is computed, not what it computes (the same gradient up to float sums): a run may be resumed
# with them changed (a smaller micro-batch after running out of memory), so they are in no artifact's key.


class PolicyOptimFields(OptimFields):
    """What BC and Improve add to the optimiser settings: how their rows are batched, and how a step is computed."""

    @model_validator(mode="after")
    def _a_share_per_process(self) -> PolicyOptimFields:
        if self.processes > self.batch_size:
            raise ValueError(
                f"processes ({self.processes}) must be at most batch_size ({self.batch_size}): each "
                "process computes a share of every batch"
            )
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError(
                "strategy: fsdp shards a full fine-tuning; with lora the frozen base fits one GPU: use "
                "strategy: ddp (or drop lora)"
            )
        return self

    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16: the forward and backward pass under bfloat16 autocast (CPUs with AVX512-BF16 and "
        "GPUs from Ampere on); fp16: float16 autocast with a gradient scaler (older GPUs). Weights stay float32",
    )
    processes: int = Field(
        1,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="data-parallel training processes (torchrun; one per GPU, or CPU processes with gloo): each "
        "computes its share of every batch, one all-reduce per step makes the gradient the whole batch's (the "
        "same step as one process with micro-batches); only the first validates and publishes "
        "(rest/training/distributed.py)",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        json_schema_extra=IN_NO_KEY,
        description="with processes > 1: ddp, every process holds the whole model (the gradients are summed); "
        "fsdp, torch's fully_shard: weights, gradients and optimiser state sharded over the processes, for a model "
        "whose full fine-tuning does not fit one GPU (not with lora: a LoRA step's frozen base fits, use ddp)",
    )
    micro_batch_size: int | None = Field(
        None,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="sequences per forward/backward pass; a step accumulates the gradients of batch_size / "
        "micro_batch_size of them, normalised over the whole batch (the same step as one pass, up to float sums). "
        "null: the whole batch at once. Lower it when a batch does not fit in memory",
    )
    gradient_checkpointing: bool = Field(
        False,
        json_schema_extra=IN_NO_KEY,
        description="recompute activations in the backward pass: less memory, ~30% more compute",
    )
    lora: LoraConfig | None = Field(
        None,
        description="train a LoRA adapter instead of every weight ({r, alpha, dropout, target_modules}); null: full "
        "fine-tuning. With kl_beta > 0 and policy-0 as the start, the reference is the adapter switched off: no "
        "second model in memory",
    )
    group_by_length: bool = Field(
        False,
        description="batches of rows of similar length (source + target characters; transformers' group_by_length): "
        "less padding, so more examples/s, but a higher held-out loss after as many steps; false: batches as drawn",
    )


class BCConfig(PolicyOptimFields):
    """policy-0: behaviour cloning (token-level NLL) on `data.train`. The defaults (a pre-LN model, lr 1e-3, warm-up
    over the first 10% of `steps`) are the from-scratch recipe; docs/results.md has what they were chosen on."""

    warmup_fraction: float | None = Field(
        0.1,
        ge=0,
        lt=1,
        description="warm-up as a fraction of `steps` (the first 10% by default), so the warm-up follows when you "
        "change steps; null uses warmup_steps instead",
    )
    valid_every: int | None = Field(
        None,
        ge=1,
        json_schema_extra=IN_KEY_WHEN_SET,
        description="early stopping: validate every this-many steps and stop when `patience` validations in a row "
        "did not raise the validation score (eval.select_by); policy-0 is the best checkpoint, and `steps` is "
        "the most BC may take. null: train all `steps`",
    )
    patience: int = Field(
        2,
        ge=1,
        description="early stopping: validations without a better score before BC stops",
        json_schema_extra=in_key_when_set_by("valid_every"),
    )

    @model_validator(mode="after")
    def _early_stopping_in_one_process(self) -> BCConfig:
        if self.valid_every is not None and self.processes > 1:
            raise ValueError("bc.valid_every (early stopping) validates in one process: set bc.processes to 1")
        return self


class VllmConfig(Section):
    """How `grow.engine: vllm` runs: vLLM in a process of its own (rest/grow/vllm_worker.py), started once and kept
    for every shard and evaluation in the process, each new policy's weights loaded into it. None of it changes a
    sample: it is in no artifact's key."""

    python: str | None = Field(
        None,
        description="the Python interpreter that has vllm installed (vLLM pins its own transformers and fastapi, so "
        "it may live in a venv of its own); null: $REST_VLLM_PYTHON when set, else the pipeline's own interpreter",
    )
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the share of the GPU's memory vLLM takes for weights and KV cache; the rest is left for "
        "training and reward models in the same process (ignored on CPU, where VLLM_CPU_KVCACHE_SPACE, in GiB, "
        "sets the KV cache: 1 unless you set it)",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="longest prompt + completion, in tokens; null: the model's own limit (vLLM sizes "
        "its KV cache by it: set it for models with long contexts)",
    )
    enforce_eager: bool = Field(
        False,
        description="no CUDA graphs / compiled kernels: starts faster, samples slower; for tests and tiny models",
    )
    warm: bool = Field(
        True,
        description="keep the vLLM process from one policy to the next and load each new policy's weights into it "
        "(vLLM's reload_weights; on a GPU it sleeps while the pipeline trains); false: a new process per policy "
        "(20-50 s each on a CPU). A policy of another architecture or tokenizer always gets a new process",
    )


class GrowConfig(Section):
    """Grow: N samples per source from the current policy, scored and written as Parquet shards."""

    steps: int = Field(2, json_schema_extra=IN_NO_KEY, ge=0, description="G, the number of Grow steps of `rest run`")
    num_samples: int = Field(8, ge=1, description="N samples per source")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; 1.0 samples the policy itself")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1.0 turns it off")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0 turns it off")
    max_new_tokens: int = Field(48, ge=1, description="longest completion, in tokens")
    batch_size: int = Field(256, ge=1, description="sequences decoded together (sources x samples)")
    shard_size: int = Field(250, ge=1, description="sources per shard; a shard is the unit of work and of resume")
    sources_per_step: int | None = Field(
        None,
        ge=1,
        description="a fresh 'superbatch' of this many sources per Grow step (SuperHF): step g takes the next slice "
        "of a seeded shuffle of the Grow sources, reshuffled each time they are used up; "
        "null: every source, every step",
    )
    workers: int = Field(
        1,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="shards sampled at once (threads); on CPU torch already uses every core",
    )
    engine: Literal["torch", "vllm"] = Field(
        "torch",
        description="what samples: torch (our batched decoding loop on the transformers model) or vllm "
        "(decoder-only policies; `grow.vllm` says how it runs); rest/grow/engines.py. Part of the Grow step's key, so "
        "shards of two engines never mix. Sampling a policy-0 or a published policy for `rest eval` and best-of-N "
        "uses it too; a policy just trained is validated with torch",
    )
    vllm: VllmConfig = Field(
        json_schema_extra=IN_NO_KEY, default_factory=lambda: VllmConfig(), description="how the vllm engine runs"
    )


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


class PreferenceConfig(Section):
    """How a preference loss (`improve.loss: dpo | ipo`) learns from a Grow step: pairs (chosen, rejected) of one
    source's samples, the chosen one clearing the step's tau. rest/improve/objectives.py has the losses with worked
    values."""

    pairs: Literal["best_worst", "margin"] = Field(
        "best_worst",
        description="best_worst: one pair per source, its best distinct sample against its worst; margin: every pair "
        "of its distinct samples whose reward gap is at least `margin`",
    )
    margin: float = Field(
        0.1, ge=0, le=1, description="the least reward gap of a pair (best_worst too); a gap of 0 is never a pair"
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="how far the policy may move from the reference: DPO's inverse temperature on the log-likelihood "
        "ratios; IPO's target gap is 1 / (2 beta)",
    )
    average_log_prob: bool = Field(
        True,
        description="true: each sequence's log-likelihood ratio divided by its tokens inside the loss (the "
        "length-invariant form: a longer completion is not preferred for its length); false: summed, as DPO",
    )
    reference: Literal["grower", "policy-0"] = Field(
        "grower",
        description="the reference policy of the ratios: the policy that sampled the Grow step (iterative "
        "DPO), or policy-0 every time",
    )
    nll_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the token-mean NLL of the labelled rows mixed into every batch (improve.train_mix of "
        "it; PPO-ptx's mixing): keeps the policy on the task while the pairs move it",
    )


class ImproveConfig(PolicyOptimFields):
    """Improve: fine-tune on the Grow samples whose reward clears tau, one step per threshold."""

    thresholds: list[float] = Field(
        default_factory=lambda: [0.9, 1.0],
        description="tau per Improve step, on the normalised reward; strictly rising, in [0, 1]",
    )
    train_mix: float = Field(
        0.25, ge=0, lt=1, description="fraction of every batch drawn from data.train (the rest: kept samples)"
    )
    init: Literal["previous", "policy-0"] = Field(
        "previous", description="fine-tune from the previous policy (ReST) or from policy-0 each time (ReST-EM)"
    )
    steps: int = Field(300, ge=0)
    lr: float = Field(5e-4, gt=0)
    loss: Literal["token_mean", "sequence_mean", "sum", "dpo", "ipo"] = Field(
        "token_mean",
        description="token_mean: NLL over every target token of the batch; sequence_mean: each sequence's mean "
        "NLL, then the batch mean (length-invariant); sum: each sequence's summed NLL, then the batch mean; dpo, "
        "ipo: a preference loss on pairs of the Grow step's samples (`improve.preference`), plus NLL on the "
        "labelled rows mixed in",
    )
    preference: PreferenceConfig = Field(
        default_factory=lambda: PreferenceConfig(), description="the pairs, beta and reference of loss: dpo | ipo"
    )
    kl_beta: float = Field(
        0.0,
        ge=0,
        description="weight of a KL(policy || policy-0) penalty on the batch's target tokens (SuperHF's prior); 0 "
        "turns it off",
    )
    reward_weighted: bool = Field(
        False, description="weight each kept sample's loss by its reward (labelled pairs weigh 1)"
    )
    token_weights: str | None = Field(
        None,
        description="a reward component whose per-token scores (reward_tokens_<component>, written by a seq2seq "
        "reward model) weight each kept sample's target tokens in the NLL by (score + 1) / 2: the tokens before the "
        "reward model's correction departs from the sample count fully, those after it not at all (labelled rows "
        "weigh 1); null: every token weighs 1",
    )
    unlikelihood: float = Field(
        0.0,
        ge=0,
        description="with token_weights: + this x the batch's mean over rows of -log(1 - p) of each kept sample's "
        "first token the reward model would rewrite (its first token score below 0; token-level unlikelihood): "
        "pushes down where a sample went wrong, an EOS too early included; 0: off",
    )
    selection: Literal["threshold", "percentile", "top_k"] = Field(
        "threshold",
        description="threshold: every sample with reward >= tau; percentile: also at or above its source's "
        "improve.percentile reward quantile; top_k: also among its source's improve.top_k best",
    )
    percentile: float = Field(
        0.75, ge=0, le=1, description="selection=percentile: the per-source reward quantile to clear"
    )
    top_k: int = Field(1, ge=1, description="selection=top_k: distinct completions kept per source")
    max_per_source: int | None = Field(
        None, ge=1, description="cap on kept samples per source, best reward first (ReST-EM caps at 10); null: no cap"
    )

    @model_validator(mode="after")
    def _preference_options(self) -> ImproveConfig:
        if self.unlikelihood > 0 and self.token_weights is None:
            raise ValueError(
                "improve.unlikelihood needs per-token scores to find the token to push down: set "
                "improve.token_weights to a component scored by a seq2seq reward model (e.g. learned)"
            )
        if self.loss in ("dpo", "ipo"):
            if self.kl_beta > 0:
                raise ValueError(
                    f"loss: {self.loss} keeps the policy near its reference already (preference.beta): set kl_beta: 0"
                )
            if (
                self.reward_weighted
                or self.selection != "threshold"
                or self.max_per_source is not None
                or self.token_weights
            ):
                raise ValueError(
                    f"loss: {self.loss} learns from pairs (improve.preference.pairs, margin): "
                    "reward_weighted, selection, max_per_source and token_weights are for the NLL losses; "
                    "leave them unset"
                )
        return self

    @field_validator("thresholds")
    @classmethod
    def _rising(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one threshold, e.g. [0.9, 1.0]")
        for tau in v:
            if not 0.0 <= tau <= 1.0:
                raise ValueError(f"every threshold must be in [0, 1] (rewards are normalised): got {v}")
        for a, b in zip(v, v[1:]):
            if not b > a:
                raise ValueError(f"thresholds must rise strictly from step to step: got {v}")
        return v


class EvalConfig(Section):
    """Evaluation: greedy decoding; corpus chrF and BLEU (sacrebleu), exact match, mean reward. With `samples: k`
    also k sampled outputs per source: pass@1 and an unbiased pass@k (Chen et al. 2021; a sample is correct when its
    reward is 1: verified) and maj@k (the majority final answer's correctness)."""

    batch_size: int = Field(250, ge=1, description="sources decoded together")
    max_new_tokens: int = Field(48, ge=1)
    samples: int = Field(
        0, ge=0, description="sampled outputs per source for pass@k and maj@k, beside greedy; 0: greedy only"
    )
    temperature: float = Field(1.0, gt=0, description="the sampled evaluation's temperature (not Grow's)")
    top_p: float = Field(1.0, gt=0, le=1, description="the sampled evaluation's nucleus mass (not Grow's)")
    pass_at: list[int] | None = Field(
        None, description="the k of pass@k, each at most `samples`; null: 1 and `samples`"
    )
    select_by: Literal["reward", "pass@1", "maj"] = Field(
        "reward",
        description="the best policy: the highest validation reward of greedy outputs (reward), sampled pass@1, or "
        "maj@k (maj and pass@1 need samples >= 1)",
    )

    @model_validator(mode="after")
    def _sampled(self) -> EvalConfig:
        if self.select_by != "reward" and self.samples == 0:
            raise ValueError(f"eval.select_by: {self.select_by} needs sampled evaluation: set eval.samples (e.g. 8)")
        if self.pass_at is not None and any(not 1 <= k <= max(self.samples, 1) for k in self.pass_at):
            raise ValueError(
                f"eval.pass_at: each k must be from 1 to eval.samples ({self.samples}), got {self.pass_at}"
            )
        return self

    def ks(self) -> list[int]:
        """The k of pass@k reported."""
        if self.samples == 0:
            return []
        return sorted(set(self.pass_at if self.pass_at is not None else [1, self.samples]))

    control: bool = Field(
        False,
        description="also train the BC control: behaviour cloning alone for as many optimiser steps as the run's "
        "policies took in all, validated at each policy's step count; the end of the run compares ReST with it "
        "(a verdict on test, a monitor on validation). Costs about one BC run; changes no artifact of the run",
        json_schema_extra=IN_NO_KEY,
    )
    valid_rows: int | None = Field(
        None,
        ge=1,
        json_schema_extra=IN_KEY_WHEN_SET,
        description="validate every policy on the same seeded random this-many rows of data.valid (metrics, "
        "monitors, the best policy's choice); null: all of it. For many small iterations (SuperHF): 128 rows of "
        "g2p's 500 cut an iteration's validation from ~1 s to ~0.3 s (docs/benchmarks.md)",
    )
    every: int = Field(
        1,
        ge=1,
        description="validate (metrics, monitors) the Improve policies of every k-th Grow step and of the last one "
        "(grow.steps); the others are published without validation (valid: null in metrics.json) and never chosen "
        "as the best: for runs of many small iterations (SuperHF), where validation would cost more than the step",
    )


class DaskConfig(Section):
    """Where Grow shards run with `orchestration.task_runner: dask`."""

    address: str | None = Field(
        None, description="scheduler of an existing cluster (tcp://host:8786); null: a LocalCluster"
    )
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes (one thread each)")


class OrchestrationConfig(Section):
    """How Prefect runs Grow's shard tasks. Dask needs a real Prefect server (PREFECT_API_URL, `make server`):
    in ephemeral mode every Dask worker would start a temporary server of its own."""

    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: grow.workers at once in this process"
    )
    dask: DaskConfig = DaskConfig()


class TrackingConfig(Section):
    """comet-ml experiment tracking: one experiment per run, written from the run's artifacts when it finishes.

    offline (default): an archive under RUN/comet/ (upload it later with `comet upload RUN/comet/*.zip`); no
    network attempt at all. online: needs COMET_API_KEY in the environment. off: nothing.
    """

    comet: Literal["off", "offline", "online"] = Field(
        "offline", description="off | offline (RUN/comet/*.zip) | online"
    )

    @field_validator("comet", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `off` (and `no`, `false`) as False: `comet: off` means "off".
        if v is False:
            return "off"
        if v is True:
            raise ValueError("`on` is not a mode: say offline (an archive under the run directory) or online")
        return v

    project: str = Field("rest", description="comet project name")
    workspace: str | None = Field(None, description="comet workspace (online); null: your default workspace")


class RunConfig(Section):
    """One ReST run: policy-0 = BC(train); G x (Grow, then one Improve step per threshold); test of the best."""

    seed: int = Field(0, description="drives init, data order and every Grow shard's sampling seed")
    device: str = Field(
        "auto",
        json_schema_extra=IN_NO_KEY,
        pattern=DEVICE_PATTERN,
        description="where every model of the run works (BC, Grow, Improve, evaluation, reward models): auto (a "
        "GPU when torch sees one, else the CPU), cpu, cuda, cuda:N or mps",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    bc: BCConfig = BCConfig()
    grow: GrowConfig = GrowConfig()
    reward: RewardConfig = RewardConfig()
    improve: ImproveConfig = ImproveConfig()
    eval: EvalConfig = EvalConfig()
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig, json_schema_extra=IN_NO_KEY)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, json_schema_extra=IN_NO_KEY)

    @model_validator(mode="after")
    def _cross_stage(self) -> RunConfig:
        if self.data.grow_on != "train" and self.data.pool is None and self.grow.steps > 0:
            raise ValueError("data.grow_on is 'pool' but data.pool is null: set data.pool or data.grow_on=train")
        if self.grow.max_new_tokens > 4 * self.model.max_target_tokens:
            raise ValueError(
                f"grow.max_new_tokens ({self.grow.max_new_tokens}) is far above model.max_target_tokens "
                f"({self.model.max_target_tokens}): samples that long would be truncated when trained on"
            )
        if self.model.chat and self.model.prompt_template != "{source} =":
            raise ValueError(
                "model.prompt_template and model.chat_template are both set: a chat template renders the prompt; "
                "put instructions in model.system_prompt, or drop chat_template"
            )
        if self.improve.token_weights is not None and self.improve.token_weights not in self.reward.components:
            raise ValueError(
                f"improve.token_weights is {self.improve.token_weights!r}, not a component of reward.components "
                f"({', '.join(self.reward.components)}): name the component whose reward model scores tokens, "
                "e.g. `learned` with a seq2seq reward model"
            )
        return self
