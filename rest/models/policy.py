"""Policies: a transformers model and its tokenizer, encoder-decoder or decoder-only, and how batches are made.

A policy on disk is a plain `save_pretrained` directory: `AutoTokenizer` / `AutoModelFor*.from_pretrained` load it,
so a user's pretrained model goes through exactly the code our from-scratch model does.

    policy = build_policy(cfg.model, train_texts, seed=0)       # from scratch, or cfg.model.pretrained
    policy.save(path); policy = load_policy(path, cfg.model)
    batch = encode_pairs(policy, ["6947"], ["sechstausend..."], cfg.model)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from rest.config import ModelConfig
from rest.data.conversations import chat_turns
from rest.errors import RestError
from rest.models.checkpoints import quiet, read_architecture, save
from rest.models.tokenizer import pad, train_tokenizer


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # (kind, text) -> token ids while training (rest.training.loop.train turns it on): each distinct text is tokenized
    # once, not once per batch it appears in (BC walks its data many times; Improve mixes the labelled pairs into
    # every batch). Off (None) otherwise, so that sampling a large pool keeps no tokens around.
    token_cache: dict[tuple[str, str], list[int]] | None = field(default=None, repr=False)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.model.config.is_encoder_decoder)

    def save(self, path: Path) -> None:
        save(self.model, path)
        save(self.tokenizer, path)


# model.dtype -> torch dtype
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def eval_autocast(policy: Policy, dtype: str):
    """Where a float32 policy (one being trained) is validated or decodes greedily, the precision a published
    policy is evaluated in (`model.dtype`): on a GPU, autocast to it; elsewhere, or for a policy already in it,
    nothing (a CPU's floats, and artifact ids, as they were)."""
    at = autocast_dtype(policy.model.device.type, policy.model.dtype, dtype)
    return torch.autocast("cuda", dtype=at) if at is not None else contextlib.nullcontext()


def autocast_dtype(device_type: str, weights: torch.dtype, dtype: str) -> torch.dtype | None:
    """The autocast dtype of eval_autocast, None for none.

    >>> autocast_dtype("cuda", torch.float32, "bfloat16"), autocast_dtype("cpu", torch.float32, "bfloat16")
    (torch.bfloat16, None)
    """
    if device_type != "cuda" or weights != torch.float32 or dtype == "float32":
        return None
    return DTYPES[dtype]


def resolve_device(spec: str = "auto", key: str = "device") -> torch.device:
    """The torch device a `device` setting names: auto is the first GPU when torch sees one, else the CPU. A GPU
    that is not there is a RestError naming `key`, not a CUDA traceback later."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RestError(
                f"{key}: {spec}, but torch {torch.__version__} sees no GPU (a CPU build of torch, or no "
                "driver); use `auto` (a GPU when there is one) or `cpu`"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RestError(
                f"{key}: {spec}, but torch sees {torch.cuda.device_count()} GPU(s) (cuda:0..."
                f"cuda:{torch.cuda.device_count() - 1}); pick one of them or `cuda`"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RestError(f"{key}: mps, but torch sees no Apple GPU; use `auto` or `cpu`")
    return device


def build_policy(model_cfg: ModelConfig, train_texts: list[str], seed: int, device: str = "cpu") -> Policy:
    """policy-0 before BC: the pretrained model, or a fresh one built from `model.architecture`, on `device`
    (float32 weights: training's)."""
    if model_cfg.pretrained:
        policy = load_policy(model_cfg.pretrained, key="model.pretrained", device=device)
        apply_template_file(policy.tokenizer, model_cfg)
        return policy
    tokenizer = scratch_tokenizer(train_texts, model_cfg)
    arch = read_architecture(model_cfg.architecture, "model.architecture")
    model_type = arch.pop("model_type")
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **arch)
    if config.is_encoder_decoder:
        # BartConfig defaults (decoder start 2, forced EOS 2) fit Bart's vocabulary, not ours: set them.
        config.decoder_start_token_id = 1
        config.forced_eos_token_id = None
        config.forced_bos_token_id = None
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = 0, 1, 2
    gen.decoder_start_token_id = config.decoder_start_token_id if config.is_encoder_decoder else None
    gen.forced_eos_token_id = gen.forced_bos_token_id = None
    return Policy(model.to(resolve_device(device)), tokenizer)


def template_file_text(model_cfg: ModelConfig) -> str | None:
    """The Jinja text of model.chat_template when it names a file (None for tokenizer, none or unset)."""
    spec = model_cfg.chat_template
    if spec in (None, "none", "tokenizer"):
        return None
    path = Path(spec)
    if not path.is_file():
        raise RestError(
            f"model.chat_template: {spec} is not a file; give a Jinja template file, `tokenizer` (the tokenizer's "
            "own) or `none`"
        )
    return path.read_text(encoding="utf-8")


def apply_template_file(tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig) -> None:
    """A template file becomes the tokenizer's chat template: policy-0 saves it, every later policy has it."""
    text = template_file_text(model_cfg)
    if text is not None:
        tokenizer.chat_template = text


# the special tokens a template file names (<|im_start|>, <|eot_id|>): one token each in a tokenizer from scratch
_TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def scratch_tokenizer(train_texts: list[str], model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The BPE tokenizer of a model from scratch, with the special tokens and chat template of a template file."""
    text = template_file_text(model_cfg)
    if text is None:
        return train_tokenizer(train_texts, model_cfg.vocab_size)
    special = list(dict.fromkeys(_TEMPLATE_TOKEN.findall(text)))
    # the template's own characters (role names, newlines) join the alphabet: render a conversation of every role
    # with a first tokenizer, then train the real one
    probe = train_tokenizer(train_texts, model_cfg.vocab_size, special)
    probe.chat_template = text
    turns = [{"role": r, "content": ""} for r in ("system", "user", "assistant")]
    rendered = str(probe.apply_chat_template(turns, tokenize=False, add_generation_prompt=False))
    for token in [*special, probe.bos_token, probe.eos_token]:
        rendered = rendered.replace(token, "")
    # the rendering is also a text to learn from: its role names become tokens, not letters
    tokenizer = train_tokenizer([*train_texts, rendered], model_cfg.vocab_size, special, characters=rendered)
    tokenizer.chat_template = text
    return tokenizer


def load_policy(path: str | Path, key: str = "policy", device: str = "cpu", dtype: str = "float32") -> Policy:
    """Load any `save_pretrained` directory or hub id: encoder-decoder or decoder-only, read from its config; its
    weights in `dtype` (model.dtype) on `device` (the run's `device` setting)."""
    path = str(path)
    where = resolve_device(device)
    try:
        with quiet():
            config = AutoConfig.from_pretrained(path)
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            model = auto.from_pretrained(path, dtype=DTYPES[dtype]).to(where)
    except (OSError, ValueError) as exc:
        raise RestError(f"{key}: cannot load a model from {path}: {exc}") from None
    return Policy(model, load_tokenizer(path, key))


def load_tokenizer(path: str | Path, key: str = "policy") -> PreTrainedTokenizerBase:
    """The tokenizer of a `save_pretrained` directory or hub id, with a pad token (what every engine decodes with)."""
    try:
        with quiet():
            tokenizer = tokenizer_class(path).from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise RestError(f"{key}: cannot load a tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token_id is None:
        # Decoder-only checkpoints often ship without a pad token; EOS is the usual stand-in (masked anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_class(path: str | Path):
    """AutoTokenizer, except for a tokenizer saved as the generic tokenizers backend (ours from scratch): AutoTokenizer
    would pick the model type's class (Qwen2Tokenizer for a qwen2 config), which replaces the saved pre-tokenizer
    with its own and so changes every token id."""
    config = Path(path) / "tokenizer_config.json"
    if config.is_file():
        try:
            generic = json.loads(config.read_text()).get("tokenizer_class") in (
                "TokenizersBackend",
                "PreTrainedTokenizerFast",
            )
        except (OSError, ValueError):
            generic = False
        if generic:
            return PreTrainedTokenizerFast
    return AutoTokenizer


def count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Batches


def _cached(policy: Policy, kind: str, texts: list[str], encode) -> list[list[int]]:
    """encode(texts not seen before) once, then every text's ids from the policy's cache (copies: callers may
    append to them)."""
    cache = policy.token_cache
    if cache is None:
        return encode(texts)
    new = list(dict.fromkeys(t for t in texts if (kind, t) not in cache))
    if new:
        cache.update(zip(((kind, t) for t in new), encode(new)))
    return [list(cache[(kind, t)]) for t in texts]


def prompt_ids(policy: Policy, sources: list[str], model_cfg: ModelConfig) -> list[list[int]]:
    """Token ids of the model input for each source: the encoder input, or the decoder-only prompt."""
    chat = (model_cfg.chat_template, model_cfg.system_prompt, sorted(model_cfg.chat_template_kwargs.items()))
    key = f"prompt:{model_cfg.prompt_template}:{chat}:{model_cfg.max_source_tokens}"
    return _cached(
        policy,
        key,
        list(sources),
        lambda texts: encode_prompts(policy.tokenizer, policy.is_encoder_decoder, texts, model_cfg),
    )


def encode_prompts(
    tok: PreTrainedTokenizerBase, is_encoder_decoder: bool, sources: list[str], model_cfg: ModelConfig
) -> list[list[int]]:
    """prompt_ids without a policy: what an engine that holds no transformers model (vLLM) sends.

    With model.chat_template, a decoder-only prompt is the tokenizer's chat template over the source's turns (a
    conversation, or the source as the user turn; model.system_prompt first) with the generation prompt: exactly
    `tok.apply_chat_template(turns, add_generation_prompt=True, **model.chat_template_kwargs)`'s ids."""
    if is_encoder_decoder:
        ids = tok(sources, add_special_tokens=True)["input_ids"]
    elif model_cfg.chat:
        texts = [
            tok.apply_chat_template(
                chat_turns(s, model_cfg.system_prompt),
                tokenize=False,
                add_generation_prompt=True,
                **model_cfg.chat_template_kwargs,
            )
            for s in sources
        ]
        # the rendered text holds the template's special tokens (BOS among them): nothing added, as
        # apply_chat_template(tokenize=True) does
        ids = tok(texts, add_special_tokens=False)["input_ids"]
    else:
        prompts = [model_cfg.prompt_template.format(source=s) for s in sources]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ids = [bos + p for p in tok(prompts, add_special_tokens=False)["input_ids"]]
    # Keep the end of an over-long prompt for decoder-only models: that is where the completion continues.
    limit = model_cfg.max_source_tokens
    return [i[:limit] if is_encoder_decoder else i[-limit:] for i in ids]


def target_ids(policy: Policy, targets: list[str], model_cfg: ModelConfig) -> list[list[int]]:
    """Token ids of each wanted output, ending in EOS (the model must learn to stop)."""
    key = f"target:{model_cfg.max_target_tokens}"
    return _cached(policy, key, list(targets), lambda texts: _target_ids(policy, texts, model_cfg))


def _target_ids(policy: Policy, targets: list[str], model_cfg: ModelConfig) -> list[list[int]]:
    tok = policy.tokenizer
    eos = tok.eos_token_id
    out = []
    for ids in tok(targets, add_special_tokens=False)["input_ids"]:
        out.append(ids[: model_cfg.max_target_tokens - 1] + [eos])
    return out


def encode_pairs(
    policy: Policy, sources: list[str], targets: list[str], model_cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """A training batch whose `labels` are -100 everywhere but on target tokens (loss on targets only), on the
    policy's device."""
    pad_id = policy.tokenizer.pad_token_id
    src = prompt_ids(policy, sources, model_cfg)
    tgt = target_ids(policy, targets, model_cfg)
    if policy.is_encoder_decoder:
        input_ids, attention_mask = pad(src, pad_id)
        labels, label_mask = pad(tgt, pad_id)
        start = policy.model.config.decoder_start_token_id
        decoder_input_ids = torch.cat([torch.full((len(tgt), 1), start, dtype=torch.long), labels[:, :-1]], dim=1)
        labels = labels.masked_fill(label_mask == 0, -100)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        }
    else:
        seqs = [s + t for s, t in zip(src, tgt)]
        input_ids, attention_mask = pad(seqs, pad_id)
        # Causal LM: position t predicts token t+1, so labels are the inputs shifted left, masked outside targets.
        labels = torch.full_like(input_ids, -100)
        for row, (s, t) in enumerate(zip(src, tgt)):
            labels[row, len(s) - 1 : len(s) + len(t) - 1] = torch.tensor(t, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    device = policy.model.device
    return {k: v.to(device) for k, v in batch.items()}


def forward_logits(policy: Policy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits aligned with `batch["labels"]` (same shape plus vocabulary)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return policy.model(**inputs, use_cache=False).logits


def target_logits(policy: Policy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits a loss reads and the labels they align with: a decoder-only model's lm_head runs from the first
    column that holds a target on (transformers' `logits_to_keep`), not over the prompts, and the labels are cut
    to the same columns; an encoder-decoder's decoder positions are its targets already (forward_logits).

    The prompt of a GSM8K question with its chat template is ~150 tokens before a ~200-token answer: at a
    152k-token vocabulary those prompt positions would be 0.6 MiB each of logits nothing reads."""
    labels = batch["labels"]
    if "decoder_input_ids" in batch or not keeps_logits(policy.model):
        return forward_logits(policy, batch), labels
    targets = (labels != -100).any(dim=0).nonzero()
    first = int(targets[0]) if len(targets) else labels.shape[1] - 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = policy.model(**inputs, use_cache=False, logits_to_keep=labels.shape[1] - first).logits
    return logits, labels[:, first:]


def keeps_logits(model: Any) -> bool:
    """Whether a causal LM's forward takes `logits_to_keep` (transformers' decoder-only models do), looking through
    peft's wrapper and the LoRA reference (BaseWeights: `.peft`)."""
    model = getattr(model, "peft", model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def target_counts(policy: Policy, targets: list[str], model_cfg: ModelConfig) -> list[int]:
    """How many target tokens (EOS included) each target has in a training batch: what a loss averages over."""
    return [len(ids) for ids in target_ids(policy, targets, model_cfg)]


# Bytes a position's logits take while a loss is computed: float32 logits, their log-softmax and their gradient.
LOGITS_BYTES = 3 * 4


def vocabulary(policy: Policy) -> int:
    """The width of the policy's logits."""
    return pass_width(policy.model)


# a model config's per-position widths other than its vocabulary: MLP (Llama/Qwen, Bart, T5, GPT-2), hidden
_WIDTHS = ("intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner", "hidden_size", "d_model")


def pass_width(model: Any) -> int:
    """The widest tensor a position of a forward pass holds: a language model's logits (its vocabulary), else (a
    reward classifier, whose head has one output) its MLP's or hidden width."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        return int(out.weight.shape[0])
    return max(int(getattr(model.config, k, None) or 0) for k in _WIDTHS) or 1


def rows_per_pass(policy: Policy, positions: Sequence[int], budget_mb: int | None) -> int:
    """How many rows of a batch one forward pass may take so that its logits stay within `budget_mb` MiB: a pass
    pads its rows to the longest, so the longest row's `positions` (tokens that get logits) count for each.
    All of them when the budget allows it or there is none (the same pass, the same floats), at least one.

        >>> rows_per_pass_for([100] * 32, vocab=151_936, budget_mb=1024)  # 100 x 151,936 x 12 bytes a row
        5
    """
    if budget_mb is None or not positions:
        return max(1, len(positions))
    return rows_per_pass_for(positions, vocabulary(policy), budget_mb)


def rows_per_pass_for(positions: Sequence[int], vocab: int, budget_mb: int) -> int:
    return rows_within(budget_mb, max(positions), vocab, len(positions))


def rows_within(budget_mb: int, positions: int, width: int, most: int) -> int:
    """Rows of `positions` positions each a pass may take so that its widest per-position tensors (`width` wide,
    LOGITS_BYTES an element) fit `budget_mb` MiB: at most `most`, at least one."""
    return max(1, min(most, (budget_mb << 20) // max(1, positions * width * LOGITS_BYTES)))


def pair_positions(policy: Policy, sources: list[str], targets: list[str], model_cfg: ModelConfig) -> list[int]:
    """Per (source, target) row, the positions whose logits a training pass computes: the decoder's (the target)
    for an encoder-decoder, the whole sequence for a decoder-only model."""
    tgt = target_ids(policy, targets, model_cfg)
    if policy.is_encoder_decoder:
        return [len(t) for t in tgt]
    return [len(s) + len(t) for s, t in zip(prompt_ids(policy, sources, model_cfg), tgt)]
