"""The `model` section: the policy (from scratch or a checkpoint), its prompt format and its lengths."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rest.config.base import Section


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
