"""`make bench-gpu`: what rest does on one GPU with a real 0.5B policy, in one script run of at most ~8 minutes.

    .venv/bin/python bench/gpu.py                 # Qwen2.5-0.5B-shaped, bf16, on the GPU: writes docs/benchmarks.md
    .venv/bin/python bench/gpu.py --tiny --out /tmp/g.md   # tiny, on the CPU: every code path, numbers mean nothing

The policy is Qwen2.5-0.5B's architecture, size and vocabulary (configs/models/qwen2.5-0.5b.json: 24 layers,
hidden 896, 151,936 tokens) with random weights, built here (nothing is downloaded), with a word-level tokenizer over
its ids ("t17 t4051 ..."), so that prompts are token ids and every engine runs the pipeline's own code path. Sections:
  grow        samples/s and output tokens/s of the torch and vLLM engines ($REST_VLLM_PYTHON or this interpreter's
              vllm), N = 8 and 32 samples per prompt (random weights rarely say EOS: completions run to the limit)
  improve     examples/s and tokens/s of rest's training loop, full fine-tuning and LoRA (bf16 autocast), and the
              model FLOPs utilisation against the chip's bf16 peak (6 N or 4 N FLOPs a token; attention not counted)
  iteration   seconds per stage of one ReST iteration through the stages `rest run` calls (policy-0, Grow 1, Improve,
              Grow 2), Grow 2 with the vLLM process kept warm (new weights loaded) and with a new process
Its table replaces the GPU section of docs/benchmarks.md (between the bench-gpu markers); `make bench` keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from gpu_torch import peak_bf16  # noqa: E402  (one table of chips' peaks: PCIe and NVL parts apart)
from speed import GPU_BEGIN, GPU_END  # noqa: E402  (bench/speed.py keeps this section when it rewrites the page)
from tables import table, write_section  # noqa: E402

import rest  # noqa: E402,F401  (the environment: offline, bit-exact floats)
from rest import stages  # noqa: E402
from rest.config import PolicyOptimFields, load_config  # noqa: E402
from rest.grow import engines  # noqa: E402
from rest.grow.engine_torch import TorchEngine  # noqa: E402
from rest.models.policy import load_policy  # noqa: E402
from rest.training.batches import Batch  # noqa: E402
from rest.training.loop import train  # noqa: E402

ARCHITECTURE = ROOT / "configs/models/qwen2.5-0.5b.json"
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 1024,
    "bos_token_id": 1022,
    "eos_token_id": 1023,
}


def build_policy(path: Path, tiny: bool) -> tuple[Path, int]:
    """The random Qwen2.5-0.5B-shaped policy and its word-level tokenizer, saved as a user's checkpoint would be.
    Returns (path, parameters)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    spec = json.loads(ARCHITECTURE.read_text())
    if tiny:
        spec.update(TINY)
    config = AutoConfig.for_model(**spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = f"t{config.eos_token_id}"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, unk_token="t0")
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def texts(rng: np.random.Generator, rows: int, length: int, vocab: int) -> list[str]:
    """Random token ids (never EOS or BOS, kept at the top of the vocabulary) as the tokenizer's words."""
    top = vocab - 400 if vocab > 100_000 else vocab - 2  # Qwen's special tokens are its last few hundred ids
    return [" ".join(f"t{i}" for i in rng.integers(2, top, length)) for _ in range(rows)]


def vllm_available() -> bool:
    """vllm where grow.vllm.python would look ($REST_VLLM_PYTHON, else this interpreter)."""
    from rest.errors import RestError
    from rest.grow.engine_vllm import check_vllm

    try:
        check_vllm(load_config(ROOT / "configs/smoke.yaml"), is_encoder_decoder=False)
    except RestError:
        return False
    return True


def run_config(policy: Path, data: Path, run_kind: dict, *overrides: str):
    """A ReST config on the bench policy and its token-id data (the same for every section)."""
    return load_config(
        ROOT / "configs/smoke.yaml",
        [
            f"model.pretrained={policy}",
            "model.prompt_template='{source}'",
            "model.chat_template=none",
            f"model.dtype={run_kind['dtype']}",
            f"model.max_source_tokens={run_kind['prompt']}",
            f"model.max_target_tokens={run_kind['new']}",
            f"device={run_kind['device']}",
            *(f"data.{s}={data / (s + '.parquet')}" for s in ("train", "pool", "valid", "test")),
            "tracking.comet=off",
            "grow.vllm.gpu_memory_utilization=0.3",
            f"grow.vllm.max_model_len={run_kind['prompt'] + run_kind['new'] + 8}",
            f"grow.vllm.enforce_eager={str(run_kind['tiny']).lower()}",
            *overrides,
        ],
    )


def bench_grow(policy: Path, data: Path, kind: dict, with_vllm: bool) -> list[dict]:
    rng = np.random.default_rng(1)
    sources = texts(rng, kind["prompts"], kind["prompt"], kind["vocab"])
    rows = []
    for engine_name in ("torch", "vllm") if with_vllm else ("torch",):
        cfg = run_config(policy, data, kind, f"grow.engine={engine_name}", f"grow.batch_size={kind['grow_batch']}")
        t = time.perf_counter()
        if engine_name == "torch":
            engine = TorchEngine(load_policy(policy, device=kind["device"], dtype=kind["dtype"]), cfg)
        else:
            engine = engines.engine_for(cfg, policy, "bench")
        start = time.perf_counter() - t
        for n in (8, 32):
            sample = dict(num_samples=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=kind["new"], seed=0)
            engine.sample(sources, **sample)  # warm-up (CUDA graphs, the allocator)
            t = time.perf_counter()
            out = engine.sample(sources, **sample)
            seconds = time.perf_counter() - t
            row = {
                "engine": engine_name,
                "n": n,
                "samples_per_s": len(out.completions) / seconds,
                "tokens_per_s": sum(out.num_tokens) / seconds,
                "start_s": start,
            }
            rows.append(row)
            print(
                f"[bench-gpu] grow {engine_name} N={n}: {row['samples_per_s']:,.0f} samples/s, "
                f"{row['tokens_per_s']:,.0f} tokens/s",
                flush=True,
            )
        engines.release()
        del engine
    return rows


def bench_improve(policy: Path, data: Path, kind: dict, params: int, peak: float | None) -> list[dict]:
    rng = np.random.default_rng(2)
    cfg = run_config(policy, data, kind)
    rows = []
    for what, lora in (
        ("full fine-tuning", None),
        ("LoRA r=16, all linear layers", {"r": 16, "target_modules": "all-linear"}),
    ):
        vocab, size = kind["vocab"], kind["batch"]
        batches = [
            Batch(texts(rng, size, kind["prompt"], vocab), texts(rng, size, kind["new"], vocab))
            for _ in range(kind["steps"] + 2)
        ]
        optim = PolicyOptimFields(
            steps=len(batches), batch_size=kind["batch"], lr=1e-5, precision=kind["precision"], lora=lora
        )
        p = load_policy(policy, device=kind["device"])  # float32 weights, bf16 autocast: the pipeline's Improve
        ends: list[float] = []  # each step's end (its loss.item() waited for the GPU)
        train(
            p, batches, optim, cfg.model, seed=0, on_progress=lambda step, loss, e=ends: e.append(time.perf_counter())
        )
        # from the end of the second step to the end of the last: no warm-up, LoRA wrap or merge, optimiser creation
        seconds = ends[-1] - ends[1]
        examples = (len(ends) - 2) * kind["batch"]
        tokens = examples * (kind["prompt"] + kind["new"])
        flops = (6 if lora is None else 4) * params * tokens / seconds
        rows.append(
            {
                "what": what,
                "examples_per_s": examples / seconds,
                "tokens_per_s": tokens / seconds,
                "mfu": flops / peak if peak else None,
            }
        )
        print(
            f"[bench-gpu] improve {what}: {examples / seconds:,.1f} examples/s, {tokens / seconds:,.0f} tokens/s",
            flush=True,
        )
        del p
        if kind["device"].startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def bench_iteration(policy: Path, data: Path, kind: dict, engine: str, warm_modes: tuple[bool, ...]) -> list[dict]:
    """One ReST iteration (policy-0 by a short BC, Grow 1, one Improve step, Grow 2) through the stages, timed."""
    rows = []
    for warm in warm_modes:
        run = data.parent / f"run-{'warm' if warm else 'restart'}"
        shutil.rmtree(run, ignore_errors=True)
        steps, size, precision = kind["steps"], kind["batch"], kind["precision"]
        cfg = run_config(
            policy,
            data,
            kind,
            f"grow.engine={engine}",
            f"grow.vllm.warm={str(warm).lower()}",
            "grow.steps=2",
            f"grow.shard_size={kind['prompts']}",
            f"grow.max_new_tokens={kind['new']}",
            f"eval.max_new_tokens={kind['new']}",
            *(
                f"{section}.{k}"
                for section in ("bc", "improve")
                for k in (f"steps={steps}", f"batch_size={size}", f"precision={precision}", "lora={r: 16}")
            ),
            "improve.thresholds=[0.0]",
        )
        engines.release()
        seconds: dict[str, float] = {}

        def timed(stage, fn, *args, seconds=seconds):
            t = time.perf_counter()
            out = fn(*args)
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t
            return out

        timed("start", stages.start_run, run, cfg)
        timed("policy-0 (BC + validation)", stages.make_policy0, run)
        for g in (1, 2):
            for i in timed(f"grow-{g}", stages.plan_grow, run, g):
                timed(f"grow-{g}", stages.grow_shard, run, g, i)
            timed(f"grow-{g}", stages.finish_grow, run, g)
            if g == 1:
                timed("improve-1-1 (train + validation)", stages.improve, run, 1, 1)
        engines.release()
        label = "" if engine == "torch" else (" (vLLM kept warm)" if warm else " (new vLLM process)")
        for stage, s in seconds.items():
            rows.append({"stage": stage + (label if stage == "grow-2" else ""), "seconds": s})
        print(f"[bench-gpu] iteration{label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), flush=True)
    # one row per stage; grow-2 once per mode
    seen, out = set(), []
    for r in rows:
        if r["stage"] not in seen:
            seen.add(r["stage"])
            out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tiny", action="store_true", help="a tiny model on the CPU: every code path, numbers mean nothing"
    )
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks.md"))
    ap.add_argument("--work", default=None, help="where the policy, data and runs go (default runs/bench-gpu)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("[bench-gpu] torch sees no GPU: run it on a GPU machine (`make setup-gpu` there), or --tiny here")
        return 2
    work = Path(args.work) if args.work else ROOT / ("runs/bench-gpu-tiny" if args.tiny else "runs/bench-gpu")
    work.mkdir(parents=True, exist_ok=True)
    kind = {
        "tiny": args.tiny,
        "device": "cuda:0" if cuda else "cpu",
        "dtype": "bfloat16" if cuda else "float32",
        "precision": "bf16" if cuda else "fp32",
        "prompts": 64 if cuda else 4,
        "prompt": 64 if cuda else 8,
        "new": 128 if cuda else 6,
        "grow_batch": 1024 if cuda else 64,
        "batch": 16 if cuda else 4,
        "steps": 40 if cuda else 2,
    }
    policy, params = build_policy(work / "policy", args.tiny)
    kind["vocab"] = json.loads((policy / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    data = work / "data"
    data.mkdir(exist_ok=True)
    for split, rows in (("train", 64), ("pool", kind["prompts"]), ("valid", 8), ("test", 8)):
        frame = pd.DataFrame(
            {
                "source": texts(rng, rows, kind["prompt"], kind["vocab"]),
                "reference": texts(rng, rows, kind["new"] // 2, kind["vocab"]),
            }
        )
        frame.to_parquet(data / f"{split}.parquet", index=False)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    peak = peak_bf16(name) if cuda else None
    with_vllm = vllm_available()
    grow = bench_grow(policy, data, kind, with_vllm)
    improve = bench_improve(policy, data, kind, params, peak)
    # --tiny: the torch engine (a vLLM start costs ~25 s on a CPU; tests/grow/test_vllm.py checks warm against fresh)
    engine = "vllm" if with_vllm and not args.tiny else "torch"
    iteration = bench_iteration(policy, data, kind, engine, (True, False) if engine == "vllm" else (True,))
    size = "Qwen2.5-0.5B-shaped" if not args.tiny else "tiny Qwen2-shaped (--tiny: numbers mean nothing)"
    section = "\n".join(
        [
            f"## GPU: {name}, {size} ({params / 1e6:,.1f}M parameters, vocabulary {kind['vocab']:,}), "
            f"{kind['dtype']} sampling, {kind['precision']} training",
            "",
            f"Written by `make bench-gpu` (`bench/gpu.py{' --tiny' if args.tiny else ''}`) on "
            f"{time.strftime('%Y-%m-%d')}: torch {torch.__version__}, {kind['prompts']} prompts of {kind['prompt']} "
            f"tokens, {kind['new']} new tokens, random weights (completions run to the limit). Peak bf16 "
            f"{'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown for this device'}.",
            "",
            "### Grow\n",
            table(
                grow,
                [
                    ("engine", "engine", ""),
                    ("n", "N", ""),
                    ("samples_per_s", "samples/s", ",.0f"),
                    ("tokens_per_s", "output tokens/s", ",.0f"),
                    ("start_s", "engine start (s; vLLM's first: cold caches)", ".1f"),
                ],
            ),
            "",
            f"### Improve: {kind['steps']} steps of {kind['batch']} rows\n",
            table(
                improve,
                [
                    ("what", "what trains", ""),
                    ("examples_per_s", "examples/s", ",.1f"),
                    ("tokens_per_s", "tokens/s", ",.0f"),
                    ("mfu", "MFU", ".1%"),
                ],
            ),
            "",
            f"### One iteration (grow.engine: {engine}), seconds per stage\n",
            table(iteration, [("stage", "stage", ""), ("seconds", "seconds", ".1f")]),
            "",
            f"Whole bench-gpu: {time.perf_counter() - started:.0f} s.",
        ]
    )
    write_section(Path(args.out), section, (GPU_BEGIN, GPU_END))
    print(f"[bench-gpu] wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
