"""The process-wide caches of rest, listed in one place, with one way to clear them.

Each keeps what is expensive to make again within one process (a loaded policy or reward model, a verified
artifact's hashes, an engine and its vLLM process, a built scorer) and is keyed by what it depends on (artifact ids,
file hashes, settings), so a stale entry is never used; `clear()` is for a cold start (tests, a long-lived worker
that must give memory back). tests/test_structure.py holds every module-level cache of rest/ to this list.
"""

from __future__ import annotations

import importlib
import sys

# name -> "module:attribute": a dict or set (emptied), a functools cache (cache_clear), or a function that releases
# what the cache holds (called).
CACHES: dict[str, str] = {
    "opened runs": "rest.artifacts.run:OPENED",
    "verified artifacts": "rest.artifacts.manifests:VERIFIED",
    "code version": "rest.artifacts.manifests:code_version",
    "resident policies": "rest.models.resident:release",
    "Grow engines": "rest.grow.engines:release",
    "reward scorers": "rest.rewards.components:BUILT",
    "rule scorers": "rest.rewards.rules:BUILT",
    "reward functions": "rest.rewards.functions:LOADED",
    "reward model weights' hashes": "rest.rewards.pretrained:HASHES",
    "learned reward models": "rest.rewards.reward_model:loaded",
    "reward probes": "rest.evaluation.monitors:PROBED",
}


def clear() -> None:
    """Empty every cache of the modules this process has imported (none is imported to be cleared)."""
    for reference in CACHES.values():
        module, _, name = reference.partition(":")
        if module not in sys.modules:
            continue
        obj = getattr(importlib.import_module(module), name)
        if hasattr(obj, "cache_clear"):
            obj.cache_clear()
        elif hasattr(obj, "clear"):
            obj.clear()
        else:
            obj()
