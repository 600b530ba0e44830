"""Learned reward models: a sequence-classification model with one output that scores (source, completion).

    rest reward train --config configs/reward-numbers.yaml        # -> runs/rm-numbers/ (reward_training.py)
    rm = load_reward_model("runs/rm-numbers"); rm.score(["23"], ["dreiundzwanzig"])   # array([0.99...])

Four objectives (`objective:` in the config):
- regression: mean squared error to a score column of Grow shards (e.g. `reward_chrf`): the model learns to
  predict chrF from (source, completion), so the reward no longer needs the reference. Its reward is the output
  clipped to [0, 1].
- bradley_terry: the pairwise loss of InstructGPT on each source's completions ranked by the score column. A batch
  is a set of whole sources: every distinct completion of a source is scored once and all K-choose-2 pairs of it
  are formed inside the batch (shuffled single pairs overfit: each completion would be seen K-1 times). Its reward
  is sigmoid(output).
- classification: binary cross-entropy on a 0/1 column, e.g. whether an output breaks a rule (Sparrow's rule
  models): its output is sigmoid(output) = P(1), and `reward.rules` scores 1 - P(violation) with it. It also
  reports held-out accuracy at 0.5.
- seq2seq: sequence MLE of a model (encoder-decoder or decoder-only) that reads (source, completion) and writes the
  source's best
  completion in the shards (rewards.seq2seq_rm): its reward is the share of the completion's tokens before the first
  place its correction departs from it, with the per-token scores alongside.

All report held-out pairwise accuracy: on sources held out by a hash of their id, the fraction of pairs of
completions with different scores that the model orders the way the scores do (a tie in the model counts 1/2).

The artifact is a `save_pretrained` directory (model + tokenizer) plus `reward.json` (objective and output
transform), `metrics.json`, `config.yaml` and `_manifest.json`, written last: a killed training leaves only a
hidden staging directory, never a directory that looks finished.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import processors
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import BaseModelOutput

from rest.artifacts import manifests
from rest.config import RewardModelConfig
from rest.errors import RestError
from rest.models.checkpoints import quiet, read_architecture
from rest.models.policy import pass_width, resolve_device, rows_within, tokenizer_class
from rest.models.tokenizer import made_by_train_tokenizer, train_tokenizer
from rest.models.tokenizer import pad as pad_ids
from rest.rewards.reward_objectives import RM_OBJECTIVES
from rest.rewards.scorer import Scorer
from rest.rewards.seq2seq_rm import (
    Seq2SeqRewardModel,
    build_seq2seq_reward_model,
    load_seq2seq_reward_model,
)

log = logging.getLogger("rest")
KIND = manifests.REWARD_MODEL
REWARD_FILE = "reward.json"


# ---------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class RewardModel:
    model: Any
    tokenizer: Any
    objective: str
    max_tokens: int
    path: str | None = None

    def encode(self, sources: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
        """Encoder-only and decoder-only models read the pair as one sequence (the tokenizer's pair template)."""
        encoded = self.tokenizer(
            list(sources),
            list(completions),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def raw(self, sources: list[str], completions: list[str]) -> torch.Tensor:
        """The model's output per pair (shape [B]), with gradients when the model trains."""
        if self.model.config.is_encoder_decoder:
            return self._raw_seq2seq(list(sources), list(completions))
        return self.model(**self.encode(sources, completions)).logits[:, 0].float()

    def _raw_seq2seq(self, sources: list[str], completions: list[str]) -> torch.Tensor:
        """Encoder-decoder models read the source with the encoder and the completion with the decoder, as the
        policy does when it writes it; the head reads the decoder's state at the completion's EOS.

        The stock *ForSequenceClassification (Bart, mBART, ...) feeds one text to both halves and finds the EOS in
        `input_ids`; given `encoder_outputs`, `input_ids` is used for nothing else, so it gets the decoder's ids.
        """
        tok, config = self.tokenizer, self.model.config
        pad, eos, start = tok.pad_token_id, tok.eos_token_id, config.decoder_start_token_id
        unique = list(dict.fromkeys(sources))  # a batch holds every completion of a source: encode it once
        index = {u: i for i, u in enumerate(unique)}
        device = self.model.device
        row = torch.tensor([index[s] for s in sources], dtype=torch.long, device=device)
        src = [ids[: self.max_tokens] for ids in tok(unique)["input_ids"]]
        dec = [
            [start] + ids[: self.max_tokens - 2] + [eos]
            for ids in tok(completions, add_special_tokens=False)["input_ids"]
        ]
        src_ids, src_mask = (t.to(device) for t in pad_ids(src, pad))
        dec_ids, dec_mask = (t.to(device) for t in pad_ids(dec, pad))
        encoded = self.model.get_encoder()(input_ids=src_ids, attention_mask=src_mask).last_hidden_state
        encoder_outputs = BaseModelOutput(last_hidden_state=encoded[row])
        src_mask = src_mask[row]
        out = self.model(
            input_ids=dec_ids,
            attention_mask=src_mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask,
            encoder_outputs=encoder_outputs,
            use_cache=False,
        )
        return out.logits[:, 0].float()

    def transform(self, raw: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(raw, dtype=torch.float64, device="cpu")
        out = torch.sigmoid(x) if RM_OBJECTIVES[self.objective].output == "sigmoid" else x.clamp(0.0, 1.0)
        return out.numpy()

    def score(self, sources, completions, batch_size: int = 512, logits_mb: int | None = None) -> np.ndarray:
        """The reward of each (source, completion), in [0, 1]: at most `batch_size` pairs a pass, and fewer when
        `max_tokens` positions of the model's widest activation would take more than `logits_mb` MiB."""
        size = batch_size if logits_mb is None else self.rows_per_pass(logits_mb, batch_size)
        return self.transform(raw_scores(self, list(sources), list(completions), size))

    def rows_per_pass(self, logits_mb: int, batch_size: int) -> int:
        """Pairs a pass may take within `logits_mb` MiB: each is at most `max_tokens` positions (an
        encoder-decoder's encoder and decoder each), at the model's widest per-position tensor (pass_width)."""
        return rows_within(logits_mb, self.max_tokens, pass_width(self.model), batch_size)


def _pair_template(tokenizer) -> None:
    """`<s> source </s> completion </s>`, token type 0 then 1 (the from-scratch tokenizer knows single only)."""
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s>:0 $A:0 </s>:0 $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)]
    )


def build_reward_model(cfg: RewardModelConfig, texts: list[str]) -> RewardModel | Seq2SeqRewardModel:
    if RM_OBJECTIVES[cfg.objective].head == "seq2seq":
        return build_seq2seq_reward_model(cfg.model, texts, cfg.seed)
    if cfg.model.pretrained:
        try:
            with quiet():
                tokenizer = AutoTokenizer.from_pretrained(cfg.model.pretrained)
                model = AutoModelForSequenceClassification.from_pretrained(cfg.model.pretrained, num_labels=1)
        except (OSError, ValueError) as exc:
            raise RestError(f"model.pretrained: cannot load {cfg.model.pretrained}: {exc}") from None
        if tokenizer is None:
            raise RestError(f"model.pretrained: {cfg.model.pretrained} has no tokenizer")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if made_by_train_tokenizer(tokenizer) and not model.config.is_encoder_decoder:
            _pair_template(tokenizer)  # a decoder-only policy of ours (InstructGPT starts the RM from the SFT policy)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        tokenizer = train_tokenizer(texts, cfg.model.vocab_size)
        arch = read_architecture(cfg.model.architecture, "model.architecture")
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(
            model_type, vocab_size=len(tokenizer), num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, **arch
        )
        if config.is_encoder_decoder:
            config.decoder_start_token_id = 1
        else:
            _pair_template(tokenizer)
        torch.manual_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model.config.problem_type = "regression"
    return RewardModel(model, tokenizer, cfg.objective, cfg.model.max_tokens)


def check_reward_model(path: str | Path, key: str = "reward model") -> dict[str, Any]:
    """The verified manifest of a finished reward-model artifact at `path`, or a RestError that says how to make one."""
    return manifests.require(Path(path), KIND, key, manifests.HOW_TO_MAKE[KIND])


@functools.lru_cache(maxsize=4)
def loaded(path: str, manifest_id: str, device: str) -> RewardModel | Seq2SeqRewardModel:
    info = json.loads((Path(path) / REWARD_FILE).read_text())
    if RM_OBJECTIVES[info["objective"]].head == "seq2seq":
        return load_seq2seq_reward_model(path, info["max_tokens"], device)
    with quiet():
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(resolve_device(device))
        tokenizer = tokenizer_class(path).from_pretrained(path)
    model.eval()
    return RewardModel(model, tokenizer, info["objective"], info["max_tokens"], path)


def load_reward_model(path: str | Path, device: str = "cpu") -> RewardModel | Seq2SeqRewardModel:
    """Load (once per process, artifact id and device) the reward model `rest reward train` wrote at `path`."""
    manifest = check_reward_model(path)
    return loaded(str(Path(path)), manifest["id"], device)


@torch.no_grad()
def raw_scores(
    rm: RewardModel | Seq2SeqRewardModel, sources: list[str], completions: list[str], batch_size: int = 512
) -> np.ndarray:
    """The raw outputs, in eval mode (no dropout), `batch_size` pairs at a time."""
    rm.model.eval()
    out = [
        rm.raw(sources[k : k + batch_size], completions[k : k + batch_size]).cpu().numpy()
        for k in range(0, len(sources), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def learned_scorer(name: str, rc, device: str) -> Scorer:
    """The `learned` component: the reward model at reward.learned, loaded on `device` (a seq2seq reward model
    scores each token too)."""
    rm = load_reward_model(rc.learned, device=device)

    def scored(sources, completions, references, logits_mb=None) -> np.ndarray:
        return rm.score(sources, completions, logits_mb=logits_mb)

    if isinstance(rm, Seq2SeqRewardModel):

        def tokens(sources, completions, references, logits_mb=None):
            return rm.score_tokens(sources, completions, logits_mb=logits_mb)

        return Scorer(scored, tokens=tokens, takes_budget=True)
    return Scorer(scored, takes_budget=True)
