"""Your data and your model's prompt format: data.columns, `messages` conversations, chat templates (the prompt is
exactly apply_chat_template's, the loss on the assistant turn only), and the sampled evaluation (pass@k, maj@k)."""

from __future__ import annotations

import json
from math import comb

import pandas as pd
import pytest
from transformers import AutoConfig, AutoTokenizer

from rest.config import DataConfig, load_config
from rest.data.conversations import as_source, conversation
from rest.data.splits import hub_parts, load_split
from rest.errors import RestError
from rest.evaluation.policy import final_answer, majority_correct, pass_at_k
from rest.models.policy import (
    encode_pairs,
    encode_prompts,
    load_policy,
    load_tokenizer,
    prompt_ids,
    scratch_tokenizer,
)
from rest.stages.preflight import chat_lines
from tests.conftest import CONFIG, rest
from tests.helpers import CHATML, build_checkpoint, write_conversations

# ---------------------------------------------------------------------------------------------------------------
# data.columns and conversations


def test_columns_map_ours_to_the_files_and_keep_the_rest(tmp_path):
    path = tmp_path / "gsm.csv"
    pd.DataFrame(
        {"id": ["a", "b"], "question": ["2 + 3?", "007 - 1?"], "answer": ["#### 5", "#### 6"], "level": ["1", "2"]}
    ).to_csv(path, index=False)
    data = DataConfig(columns={"source": "question", "reference": "answer", "source_id": "id", "test": {}})
    df = load_split(str(path), "data.train", columns=data.columns_for("train"))
    assert df.columns.tolist() == ["source_id", "source", "reference", "level"]
    assert df["source"].tolist() == ["2 + 3?", "007 - 1?"]  # CSV text stays text
    assert df["source_id"].tolist() == ["a", "b"] and df["level"].tolist() == ["1", "2"]
    # a split's own entries override the shared ones
    per_split = DataConfig(columns={"source": "question", "valid": {"source": "level"}})
    assert per_split.columns_for("valid")["source"] == "level" and per_split.columns_for("test")["source"] == "question"
    with pytest.raises(RestError, match=r"maps source to `problem`, which the file lacks \(its columns: id, ques"):
        load_split(str(path), "data.valid", columns={"source": "problem"})
    with pytest.raises(RestError, match=r"data.columns.*\{source: <column>\}"):
        load_split(str(path), "data.valid")
    with pytest.raises(ValueError, match="'prompt' is not one of our columns"):
        DataConfig(columns={"prompt": "question"})
    assert hub_parts("openai/gsm8k:main:test") == ("openai/gsm8k", "main", "test")
    assert hub_parts("openai/gsm8k") == ("openai/gsm8k", None, "train")
    assert hub_parts("user/set:validation") == ("user/set", None, "validation")


def test_a_messages_column_is_a_conversation_source_and_its_reply_the_reference(tmp_path):
    path = write_conversations("tests/fixtures/valid-small.parquet", tmp_path / "chat.jsonl", 5, system="Spell it.")
    df = load_split(str(path), "data.valid", columns={"messages": "conversation", "source_id": "uid"})
    first = json.loads(path.read_text().splitlines()[0])
    assert conversation(df["source"][0]) == first["conversation"][:2]  # system + user; the reply is the reference
    assert df["reference"][0] == first["conversation"][2]["content"] and df["source_id"][0] == "chat-0"
    assert df.columns.tolist() == ["source_id", "source", "reference", "difficulty"]
    assert conversation("12") is None and conversation(as_source([{"role": "user", "content": "x"}])) is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    bad.write_text(bad.read_text() + json.dumps({"messages": [{"role": "narrator", "content": "a"}]}) + "\n")
    with pytest.raises(RestError, match=r"`messages` row 1 is turn 0 has role 'narrator'"):
        load_split(str(bad), "data.pool", need_reference=False)


# ---------------------------------------------------------------------------------------------------------------
# pass@k and maj@k


def test_pass_at_k_is_the_unbiased_estimator_on_worked_counts():
    # 1 - C(n-c, k) / C(n, k): n=5, c=2 -> k=1: 2/5; k=2: 1 - 3/10; k=3: 1 - 1/10; k=4: no 4 wrong ones to draw
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))  # 1 - 21/252
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_majority_vote_over_final_answers():
    assert final_answer("3 + 4 = 7, so 7 * 2 = 14 #### 14") == "14"
    assert final_answer("the total is 1,200.") == "1200" and final_answer("x = 3.50") == "3.5"
    assert final_answer("  zwei   und ") == "zwei und"
    # the vote: 14 twice beats 12 once; its correctness is its samples' (here: right)
    assert majority_correct(["#### 14", "#### 12", "so 14"], [True, False, True]) is True
    assert majority_correct(["#### 12", "#### 14", "12"], [False, True, False]) is False
    # a tie goes to the answer seen first
    assert majority_correct(["5", "6"], [False, True]) is False


# ---------------------------------------------------------------------------------------------------------------
# chat templates


def test_a_template_file_gives_a_tokenizer_from_scratch_its_special_tokens(tmp_path):
    template = "configs/templates/chatml.jinja"
    cfg = load_config(CONFIG, ["model.architecture=configs/models/llama-2.6m.json", f"model.chat_template={template}"])
    train = pd.read_parquet("data/numbers/train.parquet")
    tok = scratch_tokenizer(train["source"].tolist() + train["reference"].tolist(), cfg.model)
    assert tok.chat_template == open(template).read()
    turns = [{"role": "user", "content": "6947"}]
    ids = encode_prompts(tok, False, [as_source(turns)], cfg.model)[0]
    assert ids == tok.apply_chat_template(turns, add_generation_prompt=True, return_dict=False)
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids and tok.unk_token_id not in ids
    assert tok.decode(ids) == "<|im_start|>user\n6947</s>\n<|im_start|>assistant\n"
    assert chat_lines(cfg, tok, False, {}) == []  # each turn ends with the tokenizer's EOS
    # saved beside a qwen2 config, it loads as itself (AutoTokenizer alone would build Qwen2Tokenizer's
    # pre-tokenizer instead of the saved one, changing every id)
    tok.save_pretrained(tmp_path)
    AutoConfig.for_model("qwen2").save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert encode_prompts(again, False, [as_source(turns)], cfg.model)[0] == ids and again.chat_template


def test_the_prompt_format_is_checked_against_the_tokenizer(tmp_path):
    chat = build_checkpoint("qwen2", tmp_path / "chat", chat_template=CHATML)
    plain = build_checkpoint("qwen2", tmp_path / "plain")
    splits = {"data.valid": load_split("tests/fixtures/valid-small.parquet", "data.valid")}

    def lines(path, *overrides):
        cfg = load_config(CONFIG, [f"model.pretrained={path}", *overrides])
        tok = AutoTokenizer.from_pretrained(path)
        return chat_lines(cfg, tok, False, splits)

    (warning,) = lines(chat)  # the silent failure: an instruct template left unused
    assert "has a chat template, but prompts are plain model.prompt_template text" in warning
    assert lines(chat, "model.chat_template=none") == [] and lines(chat, "model.chat_template=tokenizer") == []
    with pytest.raises(RestError, match="model.chat_template: tokenizer, but model.pretrained .* has no chat template"):
        lines(plain, "model.chat_template=tokenizer")
    conversations = write_conversations("tests/fixtures/valid-small.parquet", tmp_path / "c.jsonl", 3)
    splits["data.valid"] = load_split(str(conversations), "data.valid", columns={"messages": "conversation"})
    with pytest.raises(RestError, match="row 0 is a conversation .* set model.chat_template"):
        lines(plain)
    with pytest.raises(RestError, match="need a chat template"):
        load_config(CONFIG, ["model.system_prompt=Be brief."])
    with pytest.raises(RestError, match="eval.select_by: maj needs sampled evaluation"):
        load_config(CONFIG, ["eval.select_by=maj"])


@pytest.mark.integration
def test_a_chat_run_over_a_messages_file_of_other_column_names(tmp_path):
    """`rest run` on an instruct-shaped checkpoint (its own chat template) over chat JSONL files: prompts are
    apply_chat_template's ids, the loss is on the reply (and its EOS) only, shards hold the reply and the file's
    extra column, and validation/test report pass@k and maj@k."""
    ckpt = build_checkpoint("qwen2", tmp_path / "qwen", chat_template=CHATML)
    files = {
        split: write_conversations(parquet, tmp_path / f"{split}.jsonl", rows)
        for split, parquet, rows in (
            ("train", "data/numbers/train.parquet", 200),
            ("pool", "tests/fixtures/pool-small.parquet", 40),
            ("valid", "tests/fixtures/valid-small.parquet", 40),
        )
    }
    run = tmp_path / "run"
    system = "Write the number in German words."
    out = rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        f"model.pretrained={ckpt}",
        "model.chat_template=tokenizer",
        f"model.system_prompt={system}",
        "model.max_source_tokens=128",  # a rendered chat prompt is longer than its source
        *(f"data.{s}={files[s]}" for s in ("train", "pool", "valid")),
        f"data.test={files['valid']}",
        "data.columns={messages: conversation, source_id: uid}",
        "bc.steps=30",
        "grow.num_samples=2",
        "improve.thresholds=[0.3]",
        "improve.steps=2",
        "eval.samples=4",
        "eval.pass_at=[1, 2, 4]",
        "eval.select_by=pass@1",
    ).stdout
    assert "pass@1  pass@2  pass@4  maj@4" in out and "best policy by validation pass@1" in out

    tok = load_tokenizer(ckpt)  # the checkpoint's tokenizer as saved (AutoTokenizer would rebuild a Qwen2Tokenizer)
    cfg = load_config(str(run / "config.yaml"))
    policy = load_policy(run / "policy-0")
    valid = load_split(str(files["valid"]), "data.valid", columns=cfg.data.columns_for("valid"))
    sources, references = valid["source"].tolist()[:6], valid["reference"].tolist()[:6]
    turns = [[{"role": "system", "content": system}, *json.loads(s)] for s in sources]
    want = [tok.apply_chat_template(t, add_generation_prompt=True, return_dict=False) for t in turns]
    assert prompt_ids(policy, sources, cfg.model) == want
    # the loss: on the reply's tokens and EOS (<|im_end|>) only, after the whole rendered prompt
    batch = encode_pairs(policy, sources, references, cfg.model)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for row, (prompt, reference) in enumerate(zip(want, references)):
        reply = tok(reference, add_special_tokens=False)["input_ids"] + [eos]
        labels = batch["labels"][row].tolist()
        assert [x for x in labels if x != -100] == reply
        assert labels.index(reply[0]) == len(prompt) - 1  # position t predicts token t + 1
        assert batch["input_ids"][row].tolist()[: len(prompt)] == prompt

    rows = pd.read_parquet(run / "grow-1")
    assert len(rows) == 80 and rows["source_id"].str.startswith("pool-").all()
    assert rows["difficulty"].tolist() == [len(json.loads(s)[0]["content"]) for s in rows["source"]]
    assert not rows["completion"].str.contains("assistant|im_start|Write the number").any()
    valid_metrics = json.loads((run / "policy-0" / "metrics.json").read_text())["valid"]
    assert {"pass@1", "pass@2", "pass@4", "maj@4", "sampled_reward"} <= set(valid_metrics)
    assert 0 <= valid_metrics["pass@1"] <= valid_metrics["pass@2"] <= valid_metrics["pass@4"] <= 100
    record = json.loads((run / "run.json").read_text())
    assert "maj@4" in record["test"]["policy-0"]
    assert "pass@4" in (run / "report" / "index.html").read_text()
