"""Sampling: N completions per source from a policy, batched, with the KV cache, from a seed of our own.

    out = generate(policy, ["6947"], cfg.model, num_samples=8, temperature=1.0, seed=1234)
    out.completions[0:8]   # the 8 samples of source 0, in sample_index order

Why a decoding loop of our own rather than `model.generate`: `generate` draws from torch's global RNG, which
threads running shards side by side would share, so a shard could not be regenerated exactly. Here every call
draws from its own `torch.Generator`. It also gives each sample's log-probability under the policy itself
(temperature 1, no truncation), which is what KL and drift measures need, whatever the sampling settings were.

It is also faster than `generate` here (docs/benchmarks.md): a source's N samples share one reading of the prompt,
and rows that have ended leave the batch (`decode_batch`). The same inputs and seed give the same samples and the
same floats whatever the number of threads (a Dask worker has one): batches never shrink below MIN_ROWS rows, where
a matrix product of a few rows takes a kernel path whose sums depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import torch

from rest.config import ModelConfig
from rest.models.policy import Policy, keeps_logits, prompt_ids, vocabulary
from rest.models.tokenizer import pad as pad_ids

# What makes our loop faster than decoding every row to the end (see decode_batch); the benchmark turns them off.
SPEEDUPS = ("shared_prompt", "drop_finished")
MIN_ROWS = 16  # drop_finished never shrinks a batch below this many rows


@dataclass
class Generation:
    completions: list[str]  # row i*N + k is sample k of source i
    num_tokens: list[int]  # tokens in the completion, EOS not counted
    logprobs: list[float]  # sum of log pi(token) over the completion and its EOS, under the policy at T=1
    token_ids: list[list[int]]  # the completion's tokens, EOS not included


def _choose(
    logits: torch.Tensor, greedy: bool, temperature: float, top_p: float, top_k: int, gen: torch.Generator
) -> torch.Tensor:
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
def decode_batch(
    policy: Policy,
    prompts: list[list[int]],
    copies: list[int],
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    speedups: tuple[str, ...] = SPEEDUPS,
    logits_mb: int | None = None,
) -> tuple[list[list[int]], list[float]]:
    """Decode `copies[j]` sequences from each distinct prompt j; rows come back prompt-major.

    Two things (`speedups`) make it faster than decoding every row the whole way: the prompt is read once for all
    of its copies ("shared_prompt": the encoder pass and the first decoder step of an encoder-decoder, the prompt's
    forward pass of a decoder-only model; their KV cache is then copied per row), and a row that has emitted EOS
    leaves the batch ("drop_finished": its KV cache rows are dropped), so each step costs what the unfinished rows
    cost. Without them (the benchmark's baseline) every row is decoded until the last one ends. A decoder-only
    prompt pass whose logits would take more than `logits_mb` MiB keeps the last position's only (the one sampled
    from): a 152k-token vocabulary costs 0.6 MiB a position.
    """
    model, tok = policy.model, policy.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if "shared_prompt" not in speedups:
        prompts = [p for p, c in zip(prompts, copies) for _ in range(c)]
        copies = [1] * len(prompts)
    device = model.device
    expand = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(copies)).to(device)
    batch = int(expand.numel())
    if policy.is_encoder_decoder:
        ids, mask = (t.to(device) for t in pad_ids(prompts, pad))
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        start = torch.full((len(prompts), 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
        out = model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=start, use_cache=True)
        encoder_outputs.last_hidden_state = encoder_outputs.last_hidden_state.index_select(0, expand)
        mask = mask.index_select(0, expand)
    else:
        # Decoder-only: left padding, so every row's next token sits in the last column; positions skip the pads.
        ids, mask = (t.to(device) for t in pad_ids(prompts, pad, left=True))
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        last_only = {"logits_to_keep": 1} if over_budget(policy, ids.numel(), logits_mb) else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **last_only)
        mask = mask.index_select(0, expand)
        position = position_ids[:, -1:].index_select(0, expand)
    past = out.past_key_values
    past.batch_select_indices(expand)
    logits = out.logits[:, -1, :].float().index_select(0, expand)
    # The batch's rows: where each writes its tokens (index `batch` is a spare row for finished rows that stay in the
    # batch, dropped at the end), and whether it is still decoding.
    rows = torch.arange(batch, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    tokens = torch.full((batch + 1, max_new_tokens), pad, dtype=torch.long, device=device)
    # float64 sums of log-probabilities; MPS has no float64, and float32 is plenty for a few hundred tokens there
    logprob = torch.zeros(batch + 1, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    min_rows = MIN_ROWS if "drop_finished" in speedups else batch
    for t in range(max_new_tokens):
        nxt = choose(logits)
        tokens[rows, t] = nxt
        logprob[rows] += torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1).to(logprob.dtype)
        alive &= nxt != eos
        n_alive = int(alive.sum())  # the one wait for the device a token
        if t == max_new_tokens - 1 or n_alive == 0:
            break
        if n_alive < len(rows) and len(rows) > min_rows:
            # Drop finished rows, keeping at least min_rows: a matmul of a handful of rows takes another kernel
            # path whose float sums depend on the thread count, and ids must not (a Dask worker has 1 thread).
            keep = torch.cat([alive.nonzero(), (~alive).nonzero()[: max(0, min_rows - n_alive)]]).squeeze(-1)
            rows, nxt, alive, mask = rows[keep], nxt[keep], alive[keep], mask.index_select(0, keep)
            past.batch_select_indices(keep)
            if policy.is_encoder_decoder:
                encoder_outputs.last_hidden_state = encoder_outputs.last_hidden_state.index_select(0, keep)
            else:
                position = position.index_select(0, keep)
        rows = torch.where(alive, rows, batch)  # finished rows still in the batch write to the spare row
        nxt = torch.where(alive, nxt, pad)
        if policy.is_encoder_decoder:
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=nxt[:, None],
                past_key_values=past,
                use_cache=True,
            )
        else:
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            position = position + 1
            out = model(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=position, past_key_values=past, use_cache=True
            )
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
    seqs = []
    for row in tokens[:batch].tolist():
        seqs.append(row[: row.index(eos)] if eos in row else row)
    return seqs, logprob[:batch].tolist()


def over_budget(policy: Policy, positions: int, logits_mb: int | None) -> bool:
    """Whether float32 logits at `positions` positions would take more than `logits_mb` MiB, and the model can
    keep fewer (transformers' `logits_to_keep`)."""
    if logits_mb is None or positions * vocabulary(policy) * 4 <= logits_mb << 20:
        return False
    return keeps_logits(policy.model)


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
    speedups: tuple[str, ...] = SPEEDUPS,
    logits_mb: int | None = None,
) -> Generation:
    """Sample `num_samples` completions per source (or one greedy one). Same inputs and seed: same outputs.

    Sources are decoded longest first, in batches of `batch_size` sequences, so that a batch holds prompts of
    similar length (less padding) and the order, hence the random stream, depends only on the inputs.
    """
    policy.model.eval()
    # The random stream lives where the logits are (a CUDA generator on a GPU): the same seed gives the same samples
    # on the same device; a GPU's draws differ from the CPU's.
    gen = torch.Generator(device=policy.model.device).manual_seed(seed)
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
        # a source's samples are adjacent rows of a chunk: one prompt and its number of copies per run of rows
        runs = [(i, len(list(group))) for i, group in groupby(i for i, _ in chunk)]
        distinct, copies = [i for i, _ in runs], [n for _, n in runs]
        seqs, lps = decode_batch(
            policy, [prompts[i] for i in distinct], copies, max_new_tokens, choose, speedups, logits_mb
        )
        texts = policy.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        for (i, k), seq, text, lp in zip(chunk, seqs, texts, lps):
            slot = i * num_samples + k
            completions[slot], num_tokens[slot], logprobs[slot], token_ids[slot] = text.strip(), len(seq), lp, seq
        if on_progress is not None:
            on_progress(len(chunk))
    return Generation(completions, num_tokens, logprobs, token_ids)
