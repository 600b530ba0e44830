"""The run config: one typed section per stage (rest/config/<section>.py: data, model, training (bc), grow,
reward, improve, evaluation (eval), orchestration and tracking), composed here into RunConfig with the rules that
span sections (`RunConfig._cross_stage`).

Every field says what it means, its unit, its default and a rule of thumb; the descriptions are also the Prefect UI's
form. Everything is importable from `rest.config`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rest.config.base import DEVICE_PATTERN, IN_NO_KEY, Section
from rest.config.data import DataConfig
from rest.config.evaluation import EvalConfig
from rest.config.grow import GrowConfig
from rest.config.improve import ImproveConfig
from rest.config.model import ModelConfig
from rest.config.orchestration import OrchestrationConfig, TrackingConfig
from rest.config.reward import RewardConfig
from rest.config.training import BCConfig


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
    logits_mb: int = Field(
        1024,
        ge=1,
        json_schema_extra=IN_NO_KEY,
        description="the most memory one pass's logits may take (MiB: positions x vocabulary x float32, with their "
        "log-softmax and gradient): validation's teacher-forced NLL, every BC and Improve step and a learned "
        "reward model's scoring split their rows into passes that fit (a reward classifier counts its widest "
        "activation instead of a vocabulary), a loss's logits cover its targets only, and Grow's first decoding "
        "step keeps only the last position's logits when a batch's prompts would not. A 152k-token vocabulary "
        "costs ~1.7 MiB a position: 1024 fits ~600 positions a pass",
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
