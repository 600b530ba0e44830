"""Real architectures, proven: tiny random-weight checkpoints of T5, GPT-2, Qwen2 and Llama with tokenizers shaped
like the real ones (nothing downloaded) go through the pipeline's stages as `model.pretrained`, with and without
LoRA. What differs between them is what breaks pipelines: T5's decoder starts with the pad token and its Unigram
tokenizer has no BOS; GPT-2 has no pad token and BOS = EOS; Qwen2 has no BOS and a pad token that is not EOS;
Llama has BOS and EOS and no pad token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from rest import stages
from rest.artifacts.run import Run
from rest.config import RewardModelConfig, load_config
from rest.improve.selection import select
from rest.models.policy import load_policy, target_counts, target_ids
from rest.rewards.reward_model import load_reward_model, train_reward_model
from rest.rewards.seq2seq_rm import divergence_scores

TEXTS = pd.read_parquet("data/numbers/train.parquet")
TEXTS = TEXTS["source"].tolist() + TEXTS["reference"].tolist()
SIZES = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64}


def _unigram_t5() -> PreTrainedTokenizerFast:
    """T5's shape: a Unigram model over Metaspace pieces, <pad> = 0, </s> = 1, <unk> = 2, EOS appended, no BOS."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _byte_level(specials: list[str], **named: str) -> PreTrainedTokenizerFast:
    """GPT-2's and Qwen2's shape: byte-level BPE, no post-processing (nothing added around a text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _llama() -> PreTrainedTokenizerFast:
    """Llama's shape: BPE over Metaspace pieces with byte fallback, <unk> = 0, <s> = 1, </s> = 2, BOS prepended."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_checkpoint(kind: str, path: Path, sizes: dict[str, int] = SIZES) -> Path:
    """A tiny random `kind` model and its tokenizer, saved as a user's checkpoint would be."""
    h, n, heads, ffn = sizes["hidden"], sizes["layers"], sizes["heads"], sizes["ffn"]
    if kind == "t5":
        tok = _unigram_t5()
        config = AutoConfig.for_model("t5", d_model=h, d_kv=h // heads, d_ff=ffn, num_layers=n, num_heads=heads,
                                      vocab_size=len(tok), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    elif kind == "gpt2":
        tok = _byte_level(["<|endoftext|>"], bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
        config = AutoConfig.for_model("gpt2", n_embd=h, n_layer=n, n_head=heads, n_inner=ffn, n_positions=128,
                                      vocab_size=len(tok), bos_token_id=0, eos_token_id=0)
    elif kind == "qwen2":
        tok = _byte_level(["<|endoftext|>", "<|im_end|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = AutoConfig.for_model("qwen2", hidden_size=h, intermediate_size=ffn, num_hidden_layers=n,
                                      num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=128,
                                      vocab_size=len(tok), bos_token_id=None, eos_token_id=1, pad_token_id=0)
    elif kind == "llama":
        tok = _llama()
        config = AutoConfig.for_model("llama", hidden_size=h, intermediate_size=ffn, num_hidden_layers=n,
                                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
                                      vocab_size=len(tok), bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


KINDS = ["t5", "gpt2", "qwen2", "llama"]


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_have_the_tokenizer_shapes_of_the_real_ones(tmp_path, kind):
    tok = AutoTokenizer.from_pretrained(build_checkpoint(kind, tmp_path / kind))
    ids = tok("sechs")["input_ids"]
    if kind == "t5":
        assert tok.bos_token is None and ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
        assert AutoConfig.from_pretrained(tmp_path / kind).decoder_start_token_id == tok.pad_token_id
    if kind == "gpt2":
        assert tok.pad_token is None and tok.bos_token_id == tok.eos_token_id and tok.eos_token_id not in ids
    if kind == "qwen2":
        assert tok.bos_token is None and tok.pad_token_id not in (None, tok.eos_token_id)
    if kind == "llama":
        assert tok.pad_token is None and ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    # what rest does with it: a pad token it can use, and EOS ending every training target
    policy = load_policy(tmp_path / kind)
    assert policy.tokenizer.pad_token_id is not None


def _run(tmp_path: Path, kind: str, *overrides: str) -> Path:
    """The stages of `rest run` in this process (no Prefect: that part is the same for every model), small."""
    checkpoint = build_checkpoint(kind, tmp_path / f"{kind}-checkpoint")
    cfg = load_config("configs/smoke.yaml", [
        f"model.pretrained={checkpoint}", "bc.steps=4", "bc.batch_size=8",
        "grow.num_samples=2", "grow.shard_size=20", "grow.max_new_tokens=6", "eval.max_new_tokens=6",
        "improve.steps=3", "improve.batch_size=8", "improve.thresholds=[0.0, 0.05]", *overrides,
    ])
    run = tmp_path / "run"
    stages.start_run(run, cfg)
    stages.make_policy0(run)
    for index in stages.plan_grow(run, 1):
        stages.grow_shard(run, 1, index)
    stages.finish_grow(run, 1)
    stages.improve(run, 1, 1)
    stages.improve(run, 1, 2)
    stages.finish_run(run)
    return run


@pytest.mark.integration
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_architecture_runs_the_pipeline(tmp_path, kind, lora):
    extra = ["improve.lora={r: 4, alpha: 8}", "bc.lora={r: 4, alpha: 8}", "improve.kl_beta=0.1"] if lora else []
    run = _run(tmp_path, kind, *extra)
    rows = pd.read_parquet(run / "grow-1")
    assert len(rows) == 80 and rows["num_tokens"].between(0, 6).all() and rows["logprob"].lt(0).all()
    record = json.loads((run / "run.json").read_text())
    assert record["best_policy"] in {"policy-0", "improve-1-1", "improve-1-2"}
    auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    start = auto.from_pretrained(tmp_path / f"{kind}-checkpoint").state_dict()
    for name in ("policy-0", "improve-1-2"):  # plain checkpoints (LoRA merged) of the same architecture, trained
        assert not (run / name / "adapter_config.json").exists()
        model = auto.from_pretrained(run / name)
        assert model.config.model_type == kind
        assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items() if k in start)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_a_decoder_only_policy_is_its_own_seq2seq_corrector(tmp_path, kind):
    """`objective: seq2seq` from a decoder-only policy-0 (the pair is its prompt, the correction follows): trained on
    the run's grow-1, it scores each completion on the policy's own tokens, and a run Improves with those weights."""
    run = _run(tmp_path, kind)
    rm_dir = tmp_path / "rm"
    train_reward_model(load_config("configs/reward-numbers-seq2seq.yaml", [
        f"out={rm_dir}", f"data.shards=[{run / 'grow-1'}]", f"model.pretrained={run / 'policy-0'}", "train.steps=12",
        "train.batch_size=8", "train.warmup_steps=2", "data.negatives=1", "data.valid_fraction=0.25"],
        model=RewardModelConfig))
    metrics = json.loads((rm_dir / "metrics.json").read_text())
    assert metrics["objective"] == "seq2seq" and metrics["loss_last"] < metrics["loss_first"]
    rm = load_reward_model(rm_dir)
    assert rm.decoder_only
    rows = pd.read_parquet(run / "grow-1")
    srcs, comps = rows["source"].tolist(), rows["completion"].tolist()
    policy, model_cfg = load_policy(run / "policy-0"), Run.open(run).config.model
    rewards, tokens = rm.score_tokens(srcs, comps)
    # one score per token of the completion as the policy trains on it (EOS included): token weights line up
    assert rm.target_ids(comps) == target_ids(policy, comps, model_cfg)
    assert [len(t) for t in tokens] == target_counts(policy, comps, model_cfg)
    # the one-pass scores are those of the correction it writes after the prompt
    for target, scores, correction in zip(rm.target_ids(comps), tokens, rm.correction_ids(srcs, comps)):
        assert scores.tolist() == divergence_scores(target, correction).tolist()
    assert ((rewards >= 0) & (rewards <= 1)).all()

    learned = _run(tmp_path / "learned", kind, "reward.components={learned: 1.0}", f"reward.learned={rm_dir}",
                   "improve.token_weights=learned")
    grown = pd.read_parquet(learned / "grow-1")
    assert [len(t) for t in grown["reward_tokens_learned"]] == target_counts(policy, grown["completion"].tolist(), model_cfg)
    kept = select(grown, 0.0)
    share = np.concatenate([(np.asarray(t) + 1) / 2 for t in kept["reward_tokens_learned"]]).mean()
    improve = json.loads((learned / "improve-1-1" / "metrics.json").read_text())["improve"]
    assert improve["kept_unique"] == len(kept) and improve["token_weight_mean"] == pytest.approx(share, abs=1e-4)
