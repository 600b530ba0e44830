"""Sampling: N completions per source from a policy, batched, with the KV cache, from a seed of our own.

    out = generate(policy, ["6947"], cfg.model, num_samples=8, temperature=1.0, seed=1234)
    out.completions[0:8]   # the 8 samples of source 0, in sample_index order

Why a decoding loop of our own rather than `model.generate`: `generate` draws from torch's global RNG, which
threads running shards side by side would share, so a shard could not be regenerated exactly. Here every call
draws from its own `torch.Generator`. It also gives each sample's log-probability under the policy itself
(temperature 1, no truncation), which is what KL and drift measures need, whatever the sampling settings were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rest.config import ModelConfig
from rest.hf import pad as pad_ids
from rest.models import Policy, prompt_ids


@dataclass
class Generation:
    completions: list[str]  # row i*N + k is sample k of source i
    num_tokens: list[int]  # tokens in the completion, EOS not counted
    logprobs: list[float]  # sum of log pi(token) over the completion and its EOS, under the policy at T=1
    token_ids: list[list[int]]  # the completion's tokens, EOS not included


def _choose(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    if greedy:
        return logits.argmax(dim=-1)
    scores = logits / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p; the most likely token always stays.
        drop = (cum - sorted_scores.softmax(dim=-1)) >= top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, idx, sorted_scores)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def _decode_batch(
    policy: Policy,
    prompts: list[list[int]],
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[list[list[int]], list[float]]:
    model, tok = policy.model, policy.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    batch = len(prompts)
    if policy.is_encoder_decoder:
        ids, mask = pad_ids(prompts, pad)
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        step_inputs = {
            "decoder_input_ids": torch.full((batch, 1), model.config.decoder_start_token_id, dtype=torch.long)
        }
    else:
        # Decoder-only: left padding, so every row's next token sits in the last column; positions skip the pads.
        ids, mask = pad_ids(prompts, pad, left=True)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        step_inputs = {"input_ids": ids, "position_ids": position_ids}
    past = None
    finished = torch.zeros(batch, dtype=torch.bool)
    logprob = torch.zeros(batch, dtype=torch.float64)
    tokens = []
    for _ in range(max_new_tokens):
        if policy.is_encoder_decoder:
            out = model(encoder_outputs=encoder_outputs, attention_mask=mask, past_key_values=past, use_cache=True, **step_inputs)
        else:
            out = model(attention_mask=mask, past_key_values=past, use_cache=True, **step_inputs)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        nxt = choose(logits)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        logprob += torch.where(finished, torch.zeros_like(lp), lp).double()
        tokens.append(nxt)
        finished |= nxt == eos
        if bool(finished.all()):
            break
        if policy.is_encoder_decoder:
            step_inputs = {"decoder_input_ids": nxt[:, None]}
        else:
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype)], dim=1)
            step_inputs = {"input_ids": nxt[:, None], "position_ids": step_inputs["position_ids"][:, -1:] + 1}
    out_ids = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
    seqs = []
    for row in out_ids:
        seqs.append(row[: row.index(eos)] if eos in row else row)
    return seqs, logprob.tolist()


def generate(
    policy: Policy,
    sources: list[str],
    model_cfg: ModelConfig,
    *,
    num_samples: int = 1,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 256,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> Generation:
    """Sample `num_samples` completions per source (or one greedy one). Same inputs and seed: same outputs.

    Sources are decoded longest first, in batches of `batch_size` sequences, so that a batch holds prompts of
    similar length (less padding) and the order, hence the random stream, depends only on the inputs.
    """
    policy.model.eval()
    gen = torch.Generator().manual_seed(seed)
    prompts = prompt_ids(policy, sources, model_cfg)
    order = sorted(range(len(sources)), key=lambda i: (-len(prompts[i]), i))
    rows = [(i, k) for i in order for k in range(num_samples)]
    completions: list[str] = [""] * (len(sources) * num_samples)
    num_tokens = [0] * len(completions)
    logprobs = [0.0] * len(completions)
    token_ids: list[list[int]] = [[] for _ in completions]

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return _choose(logits, greedy, temperature, top_p, top_k, gen)

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        seqs, lps = _decode_batch(policy, [prompts[i] for i, _ in chunk], max_new_tokens, choose)
        texts = policy.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        for (i, k), seq, text, lp in zip(chunk, seqs, texts, lps):
            slot = i * num_samples + k
            completions[slot], num_tokens[slot], logprobs[slot], token_ids[slot] = text.strip(), len(seq), lp, seq
        if on_progress is not None:
            on_progress(len(chunk))
    return Generation(completions, num_tokens, logprobs, token_ids)
