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
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
)

from rest import stages
from rest.artifacts.run import Run
from rest.config import RewardModelConfig, load_config
from rest.improve.selection import select
from rest.models.policy import load_policy, target_counts, target_ids
from rest.rewards.reward_model import load_reward_model
from rest.rewards.reward_training import train_reward_model
from rest.rewards.seq2seq_rm import divergence_scores
from tests.helpers import build_checkpoint

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
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"model.pretrained={checkpoint}",
            "bc.steps=4",
            "bc.batch_size=8",
            "grow.num_samples=2",
            "grow.shard_size=20",
            "grow.max_new_tokens=6",
            "eval.max_new_tokens=6",
            "improve.steps=3",
            "improve.batch_size=8",
            "improve.thresholds=[0.0, 0.05]",
            *overrides,
        ],
    )
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
    train_reward_model(
        load_config(
            "configs/reward-numbers-seq2seq.yaml",
            [
                f"out={rm_dir}",
                f"data.shards=[{run / 'grow-1'}]",
                f"model.pretrained={run / 'policy-0'}",
                "train.steps=12",
                "train.batch_size=8",
                "train.warmup_steps=2",
                "data.negatives=1",
                "data.valid_fraction=0.25",
            ],
            model=RewardModelConfig,
        )
    )
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

    learned = _run(
        tmp_path / "learned",
        kind,
        "reward.components={learned: 1.0}",
        f"reward.learned={rm_dir}",
        "improve.token_weights=learned",
    )
    grown = pd.read_parquet(learned / "grow-1")
    assert [len(t) for t in grown["reward_tokens_learned"]] == target_counts(
        policy, grown["completion"].tolist(), model_cfg
    )
    kept = select(grown, 0.0)
    share = np.concatenate([(np.asarray(t) + 1) / 2 for t in kept["reward_tokens_learned"]]).mean()
    improve = json.loads((learned / "improve-1-1" / "metrics.json").read_text())["improve"]
    assert improve["kept_unique"] == len(kept) and improve["token_weight_mean"] == pytest.approx(share, abs=1e-4)
