"""The sequence-to-sequence reward model: language feedback instead of a scalar.

    rest reward train --config configs/reward-numbers-seq2seq.yaml       # objective: seq2seq -> runs/rm-numbers-seq2seq
    rm = load_reward_model("runs/rm-numbers-seq2seq")
    rm.correct(["23"], ["zweiundzwanzig"])            # ['dreiundzwanzig']: what the model would have written
    rm.score_tokens(["23"], ["zweiundzwanzig"])       # rewards [0.], per token [[-1, -1, -1]] (zweiund|zwanzig|EOS)
    rm.score_tokens(["23"], ["dreiundzwanzig"])       # rewards [1.], per token [[1, 1, 1]]: kept whole

An encoder-decoder model reads (source, completion) as a pair and is trained with sequence MLE to write the source's
best completion in the Grow shards: "correction" pairs (a lower-scored completion -> the best) and "identity" pairs
(the best -> itself). It needs no labels beyond the shards' scores.

Its reward: the corrected sequence is compared with the completion, token by token (the reward model's tokens, and
the completion's EOS as its last position). Tokens before the first divergence score +1, the diverging token and
every one after it -1; the scalar reward is their normalised mean, (mean + 1) / 2 = (tokens before the divergence) /
(tokens + 1), in [0, 1]: 1 when the model would keep the completion as it is, 0 when it would change its first token.

The first divergence is found in one teacher-forced pass, not by decoding: greedy decoding writes the completion's
tokens for as long as the argmax at each position is the completion's token, so its first divergence is the first
position where the argmax, given the completion so far, is another token. Same answer as generating the correction
and comparing (tests/rewards/test_seq2seq_rm.py checks it), at the cost of one forward pass.

When the reward model starts from the policy (`model.pretrained: runs/<run>/policy-0`, as the shipped config does),
its tokens are the policy's, so the per-token scores line up with the policy's tokens of the completion.

Encoder-decoder or decoder-only, as the policy is: an encoder-decoder reads the pair `source </s> completion </s>`;
a decoder-only model (a causal LM: Llama, Qwen, GPT-2 checkpoints) reads the same pair as its prompt,
`[BOS] source EOS completion EOS`, and writes the correction after it, the loss on the correction's tokens only. So a
decoder-only policy's own checkpoint can be its corrector, and its token scores line up with the policy's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tokenizers import processors
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from rest.config import ModelConfig
from rest.errors import RestError
from rest.models.checkpoints import model_config
from rest.models.policy import Policy, build_policy, keeps_logits, load_policy, pass_width, rows_within
from rest.models.sampling import decode_batch
from rest.models.tokenizer import made_by_train_tokenizer, pad

NEEDS_A_WRITER = (
    "objective: seq2seq writes a corrected completion, so it needs a model that writes text: set model.architecture "
    "to an encoder-decoder or decoder-only config (configs/models/mbart-2.6m.json, configs/models/llama-2.6m.json) "
    "or model.pretrained to such a checkpoint (T5/BART/mBART, Llama/Qwen/GPT-2, or runs/<run>/policy-0)"
)


def divergence_scores(completion: list[int], predicted: list[int]) -> np.ndarray:
    """The per-token scores of `completion` (its ids, EOS last) against `predicted` (what the model writes at each
    of its positions): +1 before the first position where they differ, -1 from it on.

    completion [a, b, c, EOS], predicted [a, b, x, ...] -> [1, 1, -1, -1] (reward 0.5); a completion the model
    would keep scores +1 everywhere (reward 1).
    """
    n = len(completion)
    first = next((i for i in range(n) if i >= len(predicted) or predicted[i] != completion[i]), n)
    return np.where(np.arange(n) < first, 1.0, -1.0)


def token_reward(scores: np.ndarray) -> float:
    """The scalar reward of per-token scores in {-1, +1}: their normalised mean, (mean + 1) / 2, in [0, 1]."""
    return float((np.mean(scores) + 1.0) / 2.0) if len(scores) else 0.0


def best_targets(df: pd.DataFrame) -> pd.DataFrame:
    """`df` (distinct completions per source with a `score`) plus `target`: what the model learns to write.

    A completion with its source's highest score is its own target (an identity pair); every other one targets the
    source's best completion (a correction pair). Ties at the top: the first of them in `df`'s order is the best.
    """
    scores = df["score"].to_numpy()
    best_score = df.groupby("source_id", sort=False)["score"].transform("max").to_numpy()
    first_best = df[scores == best_score].drop_duplicates("source_id").set_index("source_id")["completion"]
    target = np.where(scores == best_score, df["completion"].to_numpy(), df["source_id"].map(first_best).to_numpy())
    return df.assign(target=target)


def longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer of two id lists, a token at a time, until both fit in `budget` (a tokenizer's longest_first
    truncation of a pair): a long source leaves the completion whole as long as it can.

    >>> longest_first([1, 2, 3, 4, 5], [6, 7], 5)
    ([1, 2, 3], [6, 7])
    """
    over = len(a) + len(b) - budget
    if over <= 0:
        return a, b
    # the longer one loses tokens until it is as short as the other, then each loses half of what is left
    first = min(over, abs(len(a) - len(b)))
    la, lb = (len(a) - first, len(b)) if len(a) >= len(b) else (len(a), len(b) - first)
    rest = over - first
    la, lb = la - (rest + 1) // 2, lb - rest // 2
    return a[: max(0, la)], b[: max(0, lb)]


def seq2seq_pair_template(tokenizer) -> None:
    """`source </s> completion </s>` for a tokenizer of ours (it knows single sequences: `$A </s>`, the policy's)."""
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A:0 </s>:0 $B:1 </s>:1", special_tokens=[("</s>", 2)]
    )


@dataclass
class Seq2SeqRewardModel:
    model: Any
    tokenizer: Any
    max_tokens: int
    objective: str = "seq2seq"
    path: str | None = None

    # -- encoding ------------------------------------------------------------------------------------------------

    @property
    def decoder_only(self) -> bool:
        return not self.model.config.is_encoder_decoder

    def _prompt_ids(self, sources: list[str], completions: list[str]) -> list[list[int]]:
        """A decoder-only model's prompt: [BOS] source EOS completion EOS, the pair cut to `max_tokens` longest first
        (the encoder-decoder's pair, as its tokenizer truncates it)."""
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        eos = tok.eos_token_id
        src = tok(list(sources), add_special_tokens=False)["input_ids"]
        comp = tok(list(completions), add_special_tokens=False)["input_ids"]
        out = []
        for s, c in zip(src, comp):
            s, c = longest_first(s, c, self.max_tokens - len(bos) - 2)
            out.append(bos + s + [eos] + c + [eos])
        return out

    def _inputs(self, sources: list[str], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(list(sources), list(completions), truncation=True, max_length=self.max_tokens)["input_ids"]
        input_ids, mask = pad(ids, self.tokenizer.pad_token_id)
        return input_ids.to(self.model.device), mask.to(self.model.device)

    def target_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids as the decoder writes it: no special tokens, then EOS."""
        eos = self.tokenizer.eos_token_id
        return [
            ids[: self.max_tokens - 1] + [eos]
            for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        ]

    def _logits(
        self, sources: list[str], completions: list[str], targets: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits of `targets` given (source, completion), and the padded targets ([B, T])."""
        labels, label_mask = pad(targets, self.tokenizer.pad_token_id)
        device = self.model.device
        if self.decoder_only:
            # prompt + target in one sequence; position p predicts token p + 1, so the target's logits start at the
            # prompt's last position. Padding on the right: positions need no shifting. Only the positions from the
            # shortest prompt's last one on get logits (logits_to_keep), not the prompts' [B, L, vocabulary].
            prompts = self._prompt_ids(sources, completions)
            ids, mask = pad([p + t for p, t in zip(prompts, targets)], self.tokenizer.pad_token_id)
            keeps = keeps_logits(self.model)
            first = min(len(p) for p in prompts) - 1 if keeps else 0
            keep = {"logits_to_keep": ids.shape[1] - first} if keeps else {}
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **keep
            ).logits
            start = torch.tensor([len(p) - 1 - first for p in prompts])[:, None]
            at = (start + torch.arange(labels.shape[1])[None, :]).clamp(max=logits.shape[1] - 1).to(device)
            logits = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
            return logits.float(), labels.masked_fill(label_mask == 0, -100).to(device)
        input_ids, mask = self._inputs(sources, completions)
        start = self.model.config.decoder_start_token_id
        decoder_input_ids = torch.cat([torch.full((len(targets), 1), start, dtype=torch.long), labels[:, :-1]], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            decoder_input_ids=decoder_input_ids.to(device),
            decoder_attention_mask=label_mask.to(device),
            use_cache=False,
        )
        return out.logits.float(), labels.masked_fill(label_mask == 0, -100).to(device)

    # -- training ------------------------------------------------------------------------------------------------

    def nll(
        self, sources: list[str], completions: list[str], targets: list[str], reduction: str = "mean"
    ) -> torch.Tensor:
        """Token negative log-likelihood of writing each target given (source, completion), the mean over the
        batch's target tokens (or their sum): sequence MLE."""
        logits, labels = self._logits(sources, completions, self.target_ids(targets))
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction
        )

    # -- the reward ----------------------------------------------------------------------------------------------

    def rows_per_pass(self, logits_mb: int | None, batch_size: int) -> int:
        """Rows a teacher-forced pass may take so that its logits fit `logits_mb` MiB: a row's logits cover at most
        `max_tokens` target positions, and up to as many of a decoder-only model's prompt (logits_to_keep keeps
        them from the shortest prompt's last position on), at the model's vocabulary."""
        if logits_mb is None:
            return batch_size
        positions = (2 if self.decoder_only else 1) * self.max_tokens
        return rows_within(logits_mb, positions, pass_width(self.model), batch_size)

    @torch.no_grad()
    def token_scores(
        self, sources: list[str], completions: list[str], batch_size: int = 256, logits_mb: int | None = None
    ) -> list[np.ndarray]:
        """Per completion, its per-token scores (+1 before the first divergence of the model's correction from it,
        -1 from there on), EOS included; at most `batch_size` rows a pass, fewer when their logits would take more
        than `logits_mb` MiB."""
        self.model.eval()
        batch_size = self.rows_per_pass(logits_mb, batch_size)
        out: list[np.ndarray] = []
        for k in range(0, len(sources), batch_size):
            src, comp = list(sources[k : k + batch_size]), list(completions[k : k + batch_size])
            targets = self.target_ids(comp)
            logits, _ = self._logits(src, comp, targets)
            predicted = logits.argmax(-1).cpu().tolist()
            out.extend(divergence_scores(t, p[: len(t)]) for t, p in zip(targets, predicted))
        return out

    def score_tokens(
        self, sources, completions, batch_size: int = 256, logits_mb: int | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The rewards in [0, 1] and the per-token scores they are the normalised means of."""
        tokens = self.token_scores(list(sources), list(completions), batch_size, logits_mb)
        return np.array([token_reward(t) for t in tokens], dtype=np.float64), tokens

    def score(self, sources, completions, batch_size: int = 256, logits_mb: int | None = None) -> np.ndarray:
        """The reward of each (source, completion), in [0, 1]."""
        return self.score_tokens(sources, completions, batch_size, logits_mb)[0]

    def raw(self, sources: list[str], completions: list[str]) -> torch.Tensor:
        """The reward as a tensor: what held-out pairwise accuracy ranks (rest.rewards.reward_model's evaluation)."""
        return torch.as_tensor(self.score(sources, completions), dtype=torch.float32)

    def transform(self, raw) -> np.ndarray:
        return torch.as_tensor(raw, dtype=torch.float64).clamp(0.0, 1.0).numpy()

    @torch.no_grad()
    def correction_ids(self, sources: list[str], completions: list[str]) -> list[list[int]]:
        """The token ids of the model's corrected sequence for each (source, completion), decoded greedily, up to
        and with its EOS (without the decoder's start token)."""
        self.model.eval()
        tok = self.tokenizer
        if self.decoder_only:  # the pipeline's own greedy loop (left padding, KV cache); it drops the EOS
            seqs, _ = decode_batch(
                Policy(self.model, tok),
                self._prompt_ids(list(sources), list(completions)),
                [1] * len(sources),
                self.max_tokens,
                lambda logits: logits.argmax(-1),
            )
            return [s + [tok.eos_token_id] if len(s) < self.max_tokens else s for s in seqs]
        input_ids, mask = self._inputs(list(sources), list(completions))
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_tokens,
            decoder_start_token_id=self.model.config.decoder_start_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        rows = []
        for row in out[:, 1:].tolist():
            rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
        return rows

    def correct(self, sources: list[str], completions: list[str]) -> list[str]:
        """The model's corrected sequence for each (source, completion), as text: the language feedback."""
        return [
            t.strip()
            for t in self.tokenizer.batch_decode(self.correction_ids(sources, completions), skip_special_tokens=True)
        ]


def build_seq2seq_reward_model(model_cfg, texts: list[str], seed: int) -> Seq2SeqRewardModel:
    """A fresh model from `model.architecture` (with a tokenizer trained on `texts`), or `model.pretrained`: built
    as a policy is (rest.models.policy.build_policy), after checking that it writes text (an encoder-decoder or a
    causal LM, not an encoder such as BERT)."""
    key = "model.pretrained" if model_cfg.pretrained else "model.architecture"
    try:
        config = model_config(model_cfg)
    except (OSError, ValueError) as exc:
        raise RestError(f"{key}: cannot load {model_cfg.pretrained}: {exc}") from None
    if not config.is_encoder_decoder and (
        config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        raise RestError(
            f"{key}: {model_cfg.pretrained or model_cfg.architecture} is a {config.model_type} model, an "
            f"encoder; {NEEDS_A_WRITER}"
        )
    spec = ModelConfig(
        pretrained=model_cfg.pretrained, architecture=model_cfg.architecture, vocab_size=model_cfg.vocab_size
    )
    policy = build_policy(spec, texts, seed)
    if made_by_train_tokenizer(policy.tokenizer):
        seq2seq_pair_template(policy.tokenizer)
    return Seq2SeqRewardModel(policy.model, policy.tokenizer, model_cfg.max_tokens)


def load_seq2seq_reward_model(path: str, max_tokens: int, device: str) -> Seq2SeqRewardModel:
    policy = load_policy(path, key="reward model", device=device)
    policy.model.eval()
    return Seq2SeqRewardModel(policy.model, policy.tokenizer, max_tokens, path=path)
