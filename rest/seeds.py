"""Every seed of a run is derived from its names: the one seed function.

>>> derive_seed(0, "grow", 1, 3) == derive_seed(0, "grow", 1, 3) != derive_seed(0, "grow", 1, 4)
True
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (run seed, stage, step, shard, ...): stable across processes and Python versions (unlike
    hash()), and far apart for neighbouring parts (vLLM seeds sample k of a request with seed + k)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") % (2**63)
