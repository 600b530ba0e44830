"""What a Grow engine is: the protocol every engine implements, the spec each engine module exports (`ENGINE`), and
the seed of each source's request.

An engine lives in one module, rest/grow/engine_<name>.py, that exports `ENGINE = EngineSpec(...)`; `grow.engine:
<name>` finds it by that name. What the engine needs besides: its name in the Literal of `grow.engine`, and, if it
has settings, a section of GrowConfig marked `in_key=False` when they change no sample (rest/config/grow.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rest.models.sampling import Generation
from rest.seeds import derive_seed

if TYPE_CHECKING:
    from rest.config import RunConfig


class Engine(Protocol):
    """What engines.py asks of an engine. `warm`: it can take the next policy's weights in place (load_policy) and
    sleeps through training (suspend); an engine that is not warm is closed before training and made anew for the
    next policy. `failed`: it has ended (its process died); engine_for drops it and starts a new one."""

    name: str
    device: str  # where the policy runs: a learned reward scores its samples there too
    warm: bool
    failed: bool

    def sample(
        self,
        sources: list[str],
        *,
        num_samples: int,
        temperature: float,
        top_p: float,
        top_k: int,
        max_new_tokens: int,
        seed: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> Generation: ...

    def greedy(self, sources: list[str], *, max_new_tokens: int) -> Generation: ...

    def load_policy(self, policy_dir: Path) -> bool:
        """Take the weights of the published policy at `policy_dir` in place; False: it cannot (start anew)."""
        ...

    def suspend(self) -> None:
        """Free what it can while the pipeline trains (a warm engine only); the next call wakes it."""
        ...

    def close(self) -> None: ...


def request_seed(seed: int, index: int) -> int:
    """The seed of source `index`'s request in a call seeded `seed`. vLLM seeds sample k of a request with seed + k,
    so neighbouring seeds would share samples: these are hashed apart (63 bits)."""
    return derive_seed(seed, index)


def _no_check(cfg: RunConfig) -> None:
    pass


@dataclass(frozen=True)
class EngineSpec:
    """An engine as the pipeline sees it.

    load:  (published policy directory, config) -> the engine; engine_for caches it per process
    check: config -> None, or a RestError naming the key and the fix: run before a run writes anything
    """

    name: str
    load: Callable[[Path, RunConfig], Engine]
    check: Callable[[RunConfig], None] = field(default=_no_check)
