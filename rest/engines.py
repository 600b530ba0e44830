"""Grow engines: what samples completions from a policy. A process creates an engine once per policy and reuses it
across every shard (and evaluation) it runs.

    engine = engine_for(cfg, Path("runs/numbers/policy-0"), policy_id)   # cached per process
    out = engine.sample(sources, num_samples=8, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=48, seed=s)
    out = engine.greedy(sources, max_new_tokens=48)

An engine returns a `Generation` (rest/sampling.py): completions in source-major order (row i*N + k is sample k of
source i), their token counts, and each completion's log pi(y|x) under the policy at temperature 1, untruncated,
whatever the sampling settings. Same inputs and seed: same outputs. `grow.engine` names the engine and is part of
the Grow plan's key, so shards of two engines are never mixed in one step.

Adding an engine: a class with `name`, `sample` and `greedy` here, an entry in ENGINES, and the name in the Literal
of `grow.engine` in rest/config.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rest import rewards
from rest.config import RunConfig
from rest.models import Policy, load_policy
from rest.sampling import Generation, generate


class Engine(Protocol):
    name: str
    policy: Policy

    def sample(
        self, sources: list[str], *, num_samples: int, temperature: float, top_p: float, top_k: int,
        max_new_tokens: int, seed: int, on_progress: Callable[[int], None] | None = None,
    ) -> Generation: ...

    def greedy(self, sources: list[str], *, max_new_tokens: int) -> Generation: ...


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


ENGINES: dict[str, Callable[[Policy, RunConfig], Engine]] = {"torch": TorchEngine}

_CACHE: dict[tuple, Engine] = {}
_LOCK = threading.Lock()  # shards of one process may run on threads: one engine (one model load) for all


def engine_for(cfg: RunConfig, policy_dir: Path, policy_id: str) -> Engine:
    """The engine of `grow.engine` on the policy at `policy_dir` (a verified artifact with id `policy_id`),
    created on first use in this process and reused after (one entry: a process samples one policy at a time)."""
    key = (cfg.grow.engine, str(Path(policy_dir).resolve()), policy_id, cfg.model.model_dump_json(), cfg.device,
           cfg.grow.batch_size, cfg.eval.batch_size)
    rewards.use_device(cfg.device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            policy = load_policy(policy_dir, device=cfg.device, dtype=cfg.model.dtype)
            _CACHE[key] = ENGINES[cfg.grow.engine](policy, cfg)
        return _CACHE[key]


def engine_on(policy: Policy, cfg: RunConfig) -> Engine:
    """An engine of `grow.engine` on a policy already in memory (just trained, not yet published): not cached."""
    rewards.use_device(cfg.device)
    return ENGINES[cfg.grow.engine](policy, cfg)


def release() -> None:
    """Drop the cached engine (and its model): before training, so two models are not held at once."""
    with _LOCK:
        _CACHE.clear()
