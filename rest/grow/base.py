"""What a Grow engine is: the protocol every engine implements, and the seed of each source's request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from rest.models.sampling import Generation


class Engine(Protocol):
    name: str

    def sample(
        self, sources: list[str], *, num_samples: int, temperature: float, top_p: float, top_k: int,
        max_new_tokens: int, seed: int, on_progress: Callable[[int], None] | None = None,
    ) -> Generation: ...

    def greedy(self, sources: list[str], *, max_new_tokens: int) -> Generation: ...

    def close(self) -> None: ...


def request_seed(seed: int, index: int) -> int:
    """The seed of source `index`'s request in a call seeded `seed`. vLLM seeds sample k of a request with seed + k,
    so neighbouring seeds would share samples: these are hashed apart (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little") % (2**63)
