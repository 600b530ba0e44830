"""Grow engines: what samples completions from a policy. A process creates an engine once per policy and reuses it
across every shard (and evaluation) it runs.

    engine = engine_for(cfg, Path("runs/numbers/policy-0"), policy_id)   # cached per process
    out = engine.sample(sources, num_samples=8, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=48, seed=s)
    out = engine.greedy(sources, max_new_tokens=48)

An engine returns a `Generation` (rest/models/sampling.py): completions in source-major order (row i*N + k is sample
k of source i), their token counts, and each completion's log pi(y|x) under the policy at temperature 1,
untruncated, whatever the sampling settings. Same inputs and seed: same outputs. `grow.engine` names the engine and
is part of the Grow plan's key, so shards of two engines are never mixed in one step.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import torch

from rest.config import RunConfig
from rest.errors import RestError
from rest.grow.base import Engine, EngineSpec
from rest.grow.engine_torch import TorchEngine
from rest.models.policy import Policy


def engine_spec(name: str) -> EngineSpec:
    """The spec of `grow.engine: name`: `ENGINE` of rest/grow/engine_<name>.py."""
    try:
        module = importlib.import_module(f"rest.grow.engine_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"rest.grow.engine_{name}":
            raise
        raise RestError(f"grow.engine: {name!r} has no module rest/grow/engine_{name}.py") from None
    return module.ENGINE


_CACHE: dict[tuple, Engine] = {}
# shards of one process may run on threads: one engine (one model load) for all.
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
    settings = (cfg.grow.engine, cfg.model.model_dump_json(), cfg.device, cfg.grow.batch_size, cfg.eval.batch_size)
    key = (*settings, str(Path(policy_dir).resolve()), policy_id)
    with _LOCK:
        for old in [k for k, e in _CACHE.items() if e.failed]:
            del _CACHE[old]  # a failed engine has ended: start anew
        if key in _CACHE:
            return _CACHE[key]
        # Another policy: an engine with the same settings that can take new weights in place keeps running
        # (vLLM: reload_weights into the warm process, unless grow.vllm.warm is off or the architecture changed).
        warm = [k for k in _CACHE if k[: len(settings)] == settings]
        if warm and _CACHE[warm[0]].warm:
            engine = _CACHE.pop(warm[0])
            if engine.load_policy(Path(policy_dir)):
                _CACHE[key] = engine
                return engine
            engine.close()
        _clear()
        _CACHE[key] = engine_spec(cfg.grow.engine).load(Path(policy_dir), cfg)
        return _CACHE[key]


def engine_on(policy: Policy, cfg: RunConfig) -> Engine:
    """The torch engine on a policy already in memory (just trained, not yet published): not cached. vLLM loads
    from a directory, and validating a step's policy is a few greedy batches: saving it for vLLM would cost more."""
    return TorchEngine(policy, cfg)


def _clear() -> None:
    for engine in _CACHE.values():
        engine.close()
    _CACHE.clear()


def cached_engines() -> list[Engine]:
    """The engines this process holds (a failed one has ended and is dropped: the next engine_for starts anew)."""
    with _LOCK:
        for key in [k for k, e in _CACHE.items() if e.failed]:
            del _CACHE[key]
        return list(_CACHE.values())


def release() -> None:
    """Drop the cached engine (its model, its vLLM process)."""
    with _LOCK:
        _clear()


def suspend() -> None:
    """Before training: a warm engine (vLLM with grow.vllm.warm) stays, asleep on a GPU (its weights and KV cache
    freed), for the next policy; any other engine is dropped, so two models are not held at once."""
    with _LOCK:
        for key, engine in list(_CACHE.items()):
            if engine.warm and not engine.failed:
                engine.suspend()
            else:
                engine.close()
                del _CACHE[key]
