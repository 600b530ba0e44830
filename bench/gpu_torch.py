"""`make bench-gpu-torch`: the pipeline's torch paths on one GPU with the machine's own torch and transformers.

    python bench/gpu_torch.py                        # Qwen2.5-0.5B-shaped, on the GPU: docs/benchmarks.md
    python bench/gpu_torch.py --tiny --out /tmp/t.md # a tiny model on the CPU: every path, numbers mean nothing

For a GPU machine with no package index and no venv of ours: it needs torch, transformers, tokenizers, numpy,
pydantic, PyYAML and psutil (what rest's torch paths import), no vLLM, Prefect or pandas, and takes a minute or two.
The policy is Qwen2.5-0.5B's architecture and vocabulary (configs/models/qwen2.5-0.5b.json, 151,936 tokens) with
random weights, built here, with a word-level tokenizer over its ids. Rows are 200 prompt + 200 target tokens.
  validation  the teacher-forced NLL of 128 rows (training/objectives.target_nll): without a logits budget (every
              row in one pass, as before the budget) and with `logits_mb` 1024: peak memory and seconds
  grow        the torch decoding loop, N = 8 samples of 64 tokens for 32 prompts: the prefill's logits at every
              prompt position, then at the last one only (logits_to_keep): tokens/s and peak memory
  improve     six optimiser steps of 16 rows, full fine-tuning and LoRA (r 16, all linear layers), bf16 autocast
              on float32 weights: tokens/s, MFU against the chip's dense bf16 peak (6 N or 4 N FLOPs a token) and
              peak memory; the steps are timed from the end of the first to the end of the last (no wrap, merge,
              optimiser creation or warm-up in the rate)
Peak memory is torch.cuda.max_memory_allocated on a GPU, the growth of the process's peak resident memory on a CPU.
Its table replaces the text between the bench-gpu-torch markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tables import table, write_section  # noqa: E402  (bench/tables.py: standard library only)

import rest  # noqa: E402,F401  (the environment: offline, bit-exact floats)
from rest.config import ModelConfig, PolicyOptimFields  # noqa: E402
from rest.models.policy import load_policy  # noqa: E402
from rest.models.sampling import generate  # noqa: E402
from rest.training.batches import Batch  # noqa: E402
from rest.training.loop import train  # noqa: E402
from rest.training.objectives import target_nll  # noqa: E402

BEGIN, END = "<!-- bench-gpu-torch -->", "<!-- /bench-gpu-torch -->"
ARCHITECTURE = ROOT / "configs/models/qwen2.5-0.5b.json"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY |= {"num_key_value_heads": 1, "vocab_size": 4096, "bos_token_id": 4094, "eos_token_id": 4095}

# Dense bf16 peak FLOP/s by the name torch reports (vendor datasheets, no sparsity). The first rule whose words are
# all in the name wins: the PCIe and NVL parts of a chip come before its SXM part.
PEAKS = [
    (("H100", "PCIe"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),
    (("H200", "NVL"), 835e12),
    (("H200",), 989e12),
    (("GH200",), 989e12),
    (("B200",), 2250e12),
    (("A100",), 312e12),
    (("L40S",), 362e12),
    (("A10G",), 70e12),
    (("L4",), 121e12),
]


def peak_bf16(name: str) -> float | None:
    """The dense bf16 peak of the device torch calls `name`, None when unknown.

    >>> [peak_bf16(n) / 1e12 for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL")]
    [989.0, 756.0, 835.0]
    >>> peak_bf16("NVIDIA GeForce RTX 4090") is None
    True
    """
    words = name.replace("-", " ").split()
    for need, peak in PEAKS:
        if all(w in words for w in need):
            return peak
    return None


class Peak:
    """Peak memory (MB) of what runs inside it: the allocator's on a GPU, the resident set's growth on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.mb = cuda, 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base
        return False


def build_policy(path: Path, tiny: bool) -> int:
    """The random Qwen2.5-0.5B-shaped policy and its word-level tokenizer, saved as a checkpoint; its parameters."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    spec = json.loads(ARCHITECTURE.read_text()) | (TINY if tiny else {})
    config = AutoConfig.for_model(**spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(config.vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = f"t{config.eos_token_id}"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, unk_token="t0").save_pretrained(path)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def texts(rng: np.random.Generator, rows: int, length: int, vocab: int) -> list[str]:
    top = vocab - 400 if vocab > 100_000 else vocab - 4  # never a special token (Qwen's are its last few hundred)
    return [" ".join(f"t{i}" for i in rng.integers(2, top, length)) for _ in range(rows)]


def timed(fn, cuda: bool) -> tuple[object, float, float]:
    """fn()'s result, its seconds and its peak memory (MB); an out-of-memory error is the result 'out of memory'."""
    with Peak(cuda) as peak:
        started = time.perf_counter()
        try:
            out = fn()
        except torch.OutOfMemoryError:
            out = "out of memory"
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return out, seconds, peak.mb


def bench(policy_dir: Path, kind: dict, params: int, peak: float | None) -> dict[str, list[dict]]:
    cuda, device, vocab = kind["cuda"], kind["device"], kind["vocab"]
    rng = np.random.default_rng(0)
    cfg = ModelConfig(
        pretrained=str(policy_dir),
        chat_template="none",
        prompt_template="{source}",
        max_source_tokens=kind["prompt"],
        max_target_tokens=kind["target"] + 1,
        dtype="bfloat16" if cuda else "float32",
    )
    out: dict[str, list[dict]] = {"validation": [], "grow": [], "improve": []}
    policy = load_policy(policy_dir, device=device)  # float32: a policy in training, as validation reads it
    sources = texts(rng, kind["rows"], kind["prompt"], vocab)
    targets = texts(rng, kind["rows"], kind["target"], vocab)
    for label, budget in (("every row in one pass (no budget)", None), ("logits_mb 1024", 1024)):
        nll, seconds, mb = timed(
            lambda b=budget, p=policy: target_nll(p, sources, targets, cfg, batch_size=len(sources), logits_mb=b),
            cuda,
        )
        out["validation"].append({"what": label, "nll": nll, "seconds": seconds, "peak_mb": mb})
        print(f"[bench-gpu-torch] validation, {label}: {nll} in {seconds:.2f} s, peak {mb:,.0f} MB", flush=True)
    del policy
    sampler = load_policy(policy_dir, device=device, dtype=cfg.dtype)  # Grow samples the published policy
    prompts = sources[: kind["prompts"]]
    for label, budget in (("logits at every prompt position", None), ("last position only (logits_to_keep)", 1)):

        def grow(b=budget, s=sampler):
            return generate(
                s,
                prompts,
                cfg,
                num_samples=8,
                max_new_tokens=kind["new"],
                batch_size=8 * len(prompts),
                seed=0,
                logits_mb=b,
            )

        grow()  # warm-up: kernels, the allocator
        sampled, seconds, mb = timed(grow, cuda)
        tokens = sum(sampled.num_tokens) if not isinstance(sampled, str) else 0
        out["grow"].append({"what": label, "tokens_per_s": tokens / seconds, "peak_mb": mb})
        print(f"[bench-gpu-torch] grow, {label}: {tokens / seconds:,.0f} tokens/s, peak {mb:,.0f} MB", flush=True)
    del sampler
    for label, lora in (("full fine-tuning", None), ("LoRA r=16, all linear layers", {"r": 16})):
        policy = load_policy(policy_dir, device=device)
        size, steps = kind["batch"], kind["steps"]
        batches = [
            Batch(texts(rng, size, kind["prompt"], vocab), texts(rng, size, kind["target"], vocab))
            for _ in range(steps)
        ]
        if lora is not None:
            lora["target_modules"] = "all-linear"
        optim = PolicyOptimFields(
            steps=steps, batch_size=size, lr=1e-5, warmup_steps=0, precision="bf16" if cuda else "fp32", lora=lora
        )
        ends: list[float] = []

        def steps_timed(p=policy, o=optim, b=batches, e=ends):  # each step's end: its loss.item() waited for it
            return train(p, b, o, cfg, 0, on_progress=lambda step, loss: e.append(time.perf_counter()))

        _, _, mb = timed(steps_timed, cuda)
        seconds = (ends[-1] - ends[0]) / (len(ends) - 1)  # a step, from the end of the first to the end of the last
        tokens = size * (kind["prompt"] + kind["target"] + 1)
        flops = (6 if lora is None else 4) * params * tokens / seconds
        out["improve"].append(
            {
                "what": label,
                "tokens_per_s": tokens / seconds,
                "mfu": flops / peak if peak else None,
                "peak_mb": mb,
            }
        )
        print(f"[bench-gpu-torch] improve, {label}: {tokens / seconds:,.0f} tokens/s, peak {mb:,.0f} MB", flush=True)
        del policy
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: every path, numbers mean nothing")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks.md"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("[bench-gpu-torch] torch sees no GPU: run it on a GPU machine, or --tiny here")
        return 2
    kind = {"cuda": cuda, "device": "cuda:0" if cuda else "cpu"}
    kind |= {"rows": 128, "prompt": 200, "target": 199, "prompts": 32, "new": 64, "batch": 16, "steps": 6}
    if not cuda:
        kind |= {"rows": 8, "prompt": 24, "target": 23, "prompts": 4, "new": 8, "batch": 4, "steps": 3}
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-torch-"))
    try:
        params = build_policy(work / "policy", args.tiny)
        kind["vocab"] = json.loads((work / "policy/config.json").read_text())["vocab_size"]
        name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
        peak = peak_bf16(name) if cuda else None
        rows = bench(work / "policy", kind, params, peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import transformers

    size = "Qwen2.5-0.5B-shaped" if not args.tiny else "tiny Qwen2-shaped (--tiny: numbers mean nothing)"
    mb = ("peak_mb", "peak memory (MB)", ",.0f")
    section = "\n".join(
        [
            f"## GPU, torch paths: {name}, {size} ({params / 1e6:,.1f}M parameters, vocabulary {kind['vocab']:,})",
            "",
            f"Written by `make bench-gpu-torch` (`bench/gpu_torch.py{' --tiny' if args.tiny else ''}`) on "
            f"{time.strftime('%Y-%m-%d')}: torch {torch.__version__}, transformers {transformers.__version__}; rows "
            f"of {kind['prompt']} prompt + {kind['target'] + 1} target tokens, random weights. Dense bf16 peak: "
            f"{'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown for this device'}.",
            "",
            f"### Validation NLL of {kind['rows']} rows\n",
            table(rows["validation"], [("what", "passes", ""), ("seconds", "seconds", ".2f"), mb]),
            "",
            f"### Grow: {kind['prompts']} prompts x 8 samples x {kind['new']} new tokens, the torch loop\n",
            table(rows["grow"], [("what", "prefill logits", ""), ("tokens_per_s", "tokens/s", ",.0f"), mb]),
            "",
            f"### Improve: {kind['steps']} steps of {kind['batch']} rows, rate over the last {kind['steps'] - 1}\n",
            table(
                rows["improve"],
                [("what", "what trains", ""), ("tokens_per_s", "tokens/s", ",.0f"), ("mfu", "MFU", ".1%"), mb],
            ),
            "",
            f"Whole run: {time.perf_counter() - started:.0f} s.",
        ]
    )
    write_section(Path(args.out), section, (BEGIN, END))
    print(f"[bench-gpu-torch] wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
