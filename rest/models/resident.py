"""Policies held in memory between the stages of one process, so that an iteration does not load from disk what it
has just trained.

    resident.keep(run.dir("improve-1-2"), policy, manifest["id"])   # publish_policy: the policy just published
    policy = resident.get(run.dir("improve-1-2"), "cpu")            # Grow samples it, a KL prior reads it
    policy = resident.take(run.dir("improve-1-2"), "cpu")           # Improve trains it in place: no longer held

A held policy is the published artifact's, as loading it would give (eval mode, every weight trainable, float32 or
the dtype asked for): the weights are the bytes the policy directory holds, and it was itself loaded from an
artifact before it was trained (publish_policy does not keep policy-0 as BC built it: a built model saves other
config bytes than a loaded one), so samples, losses and artifact ids are the same with or without it. It is found by
the artifact's id in its manifest: a directory published anew (a rerun, another config) is loaded again. At most
HELD policies are kept (the latest published one and the KL reference), oldest first out, and one copy of an
artifact per device (its float32 copy goes when its bf16 one is loaded, and back); anything else is loaded as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from rest.artifacts.manifests import read_manifest
from rest.models.policy import DTYPES, Policy, load_policy, resolve_device

HELD = 2
_POLICIES: OrderedDict[tuple[str, str, str, str], Policy] = OrderedDict()
_LOCK = threading.RLock()  # Grow shards may run on threads


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _key(path: Path, artifact_id: str | None, device: str, dtype: str) -> tuple[str, str, str, str] | None:
    if artifact_id is None:
        manifest = read_manifest(Path(path))
        artifact_id = manifest.get("id") if manifest else None
    if not artifact_id:
        return None
    return str(Path(path).resolve()), artifact_id, _device_name(resolve_device(device)), dtype


def keep(path: Path, policy: Policy, artifact_id: str) -> None:
    """Hold `policy`, just published at `path` with id `artifact_id`, for the stages after it in this process."""
    dtype = next((k for k, v in DTYPES.items() if v == policy.model.dtype), None)
    if dtype is None:
        return
    key = (str(Path(path).resolve()), artifact_id, _device_name(policy.model.device), dtype)
    policy.model.eval()  # what from_pretrained gives: no dropout, every weight trainable (a LoRA merge froze them)
    for p in policy.model.parameters():
        p.requires_grad_(True)
    with _LOCK:
        _hold(key, policy)


def _hold(key: tuple[str, str, str, str], policy: Policy) -> None:
    """Hold `policy` under `key` (newest), and one copy of an artifact per device: its copy in another dtype goes
    (on a GPU, the bf16 copy Grow samples and the float32 one Improve trained would otherwise both stay)."""
    for other in [k for k in _POLICIES if k[:3] == key[:3] and k != key]:
        del _POLICIES[other]
    _POLICIES[key] = policy
    _POLICIES.move_to_end(key)
    while len(_POLICIES) > HELD:
        _POLICIES.popitem(last=False)


def get(path: Path, device: str = "cpu", dtype: str = "float32") -> Policy:
    """The policy published at `path`, shared: to sample or score with, not to train (`take`). Loaded on a miss,
    and then held."""
    key = _key(path, None, device, dtype)
    with _LOCK:
        if key is not None and key in _POLICIES:
            _POLICIES.move_to_end(key)
            return _POLICIES[key]
        policy = load_policy(path, device=device, dtype=dtype)
        if key is not None:
            _hold(key, policy)
        return policy


def take(path: Path, device: str = "cpu", dtype: str = "float32") -> Policy:
    """The policy published at `path`, to train in place: no longer held (loaded on a miss)."""
    key = _key(path, None, device, dtype)
    with _LOCK:
        if key is not None and key in _POLICIES:
            return _POLICIES.pop(key)
    return load_policy(path, device=device, dtype=dtype)


def release() -> None:
    """Hold nothing (a GPU's memory is needed elsewhere, or a test wants a cold start)."""
    with _LOCK:
        _POLICIES.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
