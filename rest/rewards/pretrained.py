"""A pretrained reward model by path or hub id: the reward models RLHF users have (a transformers
`AutoModelForSequenceClassification` checkpoint with one output).

    reward:
      models: {helpful: {model: /models/skywork-rm-8b, dtype: bfloat16, output: sigmoid}}
      components: {helpful: 1.0}                        # writes reward_helpful

The input is the model's own chat template when its tokenizer has one (the source as the user turn, or a
conversation source's own turns; the completion as the assistant turn), else the pair (source, completion) as
the tokenizer joins two texts (BERT's [CLS] a [SEP] b [SEP]). The raw score x (logit 0) becomes a reward by the
declared map: sigmoid(scale x + shift), or affine: clip(scale x + shift, 0, 1). It loads on the device of the
policy it scores, in `dtype`.

Lineage: the model's path or hub id, its revision and, for a local directory, the sha256 of its files are part of
the Grow step's key and id: a retrained checkpoint in the same directory is a new Grow step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from rest.data.conversations import chat_turns
from rest.errors import RestError
from rest.rewards.scorer import Scorer

HASHES: dict[tuple, str] = {}


def weights_sha256(path: Path) -> str:
    """sha256 over the files of a checkpoint directory (names and bytes), cached by their sizes and times."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = (str(path.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in HASHES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        HASHES[stamp] = digest.hexdigest()
    return HASHES[stamp]


def model_identity(name: str, spec) -> dict[str, Any]:
    """What a Grow step's key records of pretrained reward model `name`."""
    path = Path(spec.model)
    local = path.is_dir()
    return {
        "name": name,
        "model": spec.model,
        "revision": spec.revision,
        "sha256": weights_sha256(path) if local else None,
    }


def check_pretrained_rm(name: str, spec) -> None:
    """RestError unless reward.models.<name> is a checkpoint (or hub id) whose config says one output."""
    from transformers import AutoConfig

    key = f"reward.models.{name}.model"
    try:
        config = AutoConfig.from_pretrained(spec.model, revision=spec.revision)
    except (OSError, ValueError) as exc:
        raise RestError(
            f"{key}: {spec.model} is neither a checkpoint directory nor a loadable hub id ({str(exc)[:200]})"
        ) from None
    if getattr(config, "num_labels", None) != 1:
        raise RestError(
            f"{key}: {spec.model} has {config.num_labels} outputs; a reward model has one (a sequence "
            "classifier with num_labels=1, as RLHF reward models are)"
        )


class PretrainedRewardModel:
    def __init__(self, name: str, spec, device: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        key = f"reward.models.{name}.model"
        check_pretrained_rm(name, spec)
        tok = AutoTokenizer.from_pretrained(spec.model, revision=spec.revision)
        if tok is None:
            raise RestError(f"{key}: {spec.model} has no tokenizer")
        self.tok = tok
        dtype = getattr(torch, spec.dtype) if spec.dtype else "auto"
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                spec.model, revision=spec.revision, dtype=dtype
            )
        except ValueError as exc:  # an architecture without a sequence-classification head
            raise RestError(f"{key}: {spec.model} cannot be loaded as a sequence classifier ({exc})") from None
        if self.tok.pad_token is None:  # decoder-only tokenizers often have none: pad with EOS, as TRL does
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:  # the head reads the last non-pad token
            self.model.config.pad_token_id = self.tok.pad_token_id
        from rest.models.policy import resolve_device

        device = str(resolve_device(device, "device"))  # `auto` from a config: the first GPU, else the CPU
        self.model.to(device).eval()
        self.device, self.spec = device, spec
        self.chat = bool(getattr(self.tok, "chat_template", None))

    def raw(self, sources: list[str], completions: list[str], logits_mb: int | None = None) -> np.ndarray:
        """The model's output per pair: `batch_size` pairs a pass, fewer when `max_tokens` positions of its widest
        activation (models.policy.pass_width) would take more than `logits_mb` MiB."""
        import torch

        from rest.models.policy import pass_width, rows_within

        size = self.spec.batch_size
        if logits_mb is not None:
            size = rows_within(logits_mb, self.spec.max_tokens, pass_width(self.model), size)
        out = []
        for a in range(0, len(completions), size):
            src, comp = sources[a : a + size], completions[a : a + size]
            if self.chat:
                texts = [
                    self.tok.apply_chat_template(
                        [*chat_turns(s, None), {"role": "assistant", "content": c}], tokenize=False
                    )
                    for s, c in zip(src, comp)
                ]
                batch = self.tok(
                    texts,
                    add_special_tokens=False,
                    padding=True,
                    truncation=True,
                    max_length=self.spec.max_tokens,
                    return_tensors="pt",
                )
            else:
                batch = self.tok(
                    src, comp, padding=True, truncation=True, max_length=self.spec.max_tokens, return_tensors="pt"
                )
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
            out.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def score(self, sources: list[str], completions: list[str], logits_mb: int | None = None) -> np.ndarray:
        x = self.spec.scale * self.raw(sources, completions, logits_mb) + self.spec.shift
        if self.spec.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-x))
        return np.clip(x, 0.0, 1.0)


def pretrained_scorer(name: str, rc, device: str) -> Scorer:
    """The component scored by pretrained reward model `name` of reward.models, on `device`."""
    rm = PretrainedRewardModel(name, rc.models[name], device)

    def scored(sources, completions, references, logits_mb=None) -> np.ndarray:
        return rm.score(list(sources), list(completions), logits_mb)

    return Scorer(scored, takes_budget=True)


def model_identity_of(name: str, rc) -> dict[str, Any]:
    """The `model` kind's identity: what a Grow step's key records of reward.models.<name>."""
    return model_identity(name, rc.models[name])


def check_model_component(name: str, rc, scored) -> None:
    """The `model` kind's check before a run: the checkpoint loads as a reward model with one output."""
    check_pretrained_rm(name, rc.models[name])
