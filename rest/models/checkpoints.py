"""Checkpoints on disk: architecture files, saving, quiet loading, and the checks that a model path or hub id
can be loaded (and its LoRA targets exist) before a run writes anything.

    arch = read_architecture("configs/models/bart-2.6m.json", "model.architecture")
    with quiet(): model.save_pretrained(path)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
)
from transformers.utils import logging as hf_logging

from rest.errors import RestError


@contextlib.contextmanager
def quiet():
    """Silence transformers' load/save progress bars and notes: one per shard task would drown the log."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_OS_ERROR = re.compile(r"os error (\d+)")


def save(obj, path) -> None:
    """`obj.save_pretrained(path)` quietly, with a disk error as the OSError it is: safetensors reports a full
    disk as `SafetensorError("... No space left on device (os error 28)")`, which names neither the errno nor the
    file."""
    try:
        with quiet():
            obj.save_pretrained(path)
    except OSError:
        raise
    except Exception as exc:
        found = _OS_ERROR.search(str(exc))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def read_architecture(path: str, key: str) -> dict[str, Any]:
    """A transformers config JSON (with `model_type`) as a dict; config key `key` is named in every error."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise RestError(
            f"{key}: {path} {what}; point it at a transformers config JSON such as configs/models/bart-2.6m.json"
        )
    try:
        arch = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise RestError(f"{key}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(arch, dict) or "model_type" not in arch:
        raise RestError(f'{key}: {path} has no `model_type` (e.g. "bart" or "llama")')
    return arch


def check_architecture(path: str, key: str) -> None:
    """Before a run writes anything: the file parses, transformers knows its model type and every field, and the
    model can be built from it (on the meta device: no memory, no time)."""
    arch = read_architecture(path, key)
    model_type = arch.pop("model_type")
    try:
        with quiet():
            config = AutoConfig.for_model(model_type, **arch)
        _skeleton(config)
    except Exception as exc:  # transformers and huggingface_hub raise many types; all mean "not a usable config"
        if "Unrecognized model identifier" in str(exc):
            raise RestError(
                f"{key}: {path}: transformers knows no model_type `{model_type}` (e.g. bart, t5, llama, gpt2)"
            ) from None
        raise RestError(
            f"{key}: {path}: transformers cannot build a `{model_type}` model from it ({_brief(exc)})"
        ) from None


def _skeleton(config):
    """The model a transformers config describes, built on the meta device: no weights, no memory, no time."""
    with quiet(), torch.device("meta"):
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        return auto.from_config(config)


def model_config(model_cfg):
    """The transformers config of the policy `model_cfg` describes (its pretrained config or its architecture file)."""
    with quiet():
        if model_cfg.pretrained:
            return AutoConfig.from_pretrained(model_cfg.pretrained)
        arch = read_architecture(model_cfg.architecture, "model.architecture")
        return AutoConfig.for_model(arch.pop("model_type"), **arch)


def module_names(model_cfg) -> list[str]:
    """The module names of the policy `model_cfg` describes."""
    return [name for name, _ in _skeleton(model_config(model_cfg)).named_modules()]


def check_lora_targets(names: list[str], targets: list[str], key: str) -> None:
    """Each LoRA target names some module (peft matches a target to a module name's last parts), or a RestError
    with the names there are."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise RestError(
                f"{key}: this model has no module `{target}`; its module names end in: {', '.join(leaves[:40])}"
            )


def _brief(exc: Exception, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def looks_like_path(spec: str) -> bool:
    """A local path rather than a hub id (`org/name`): absolute, relative with ./ or ../, ~, or more than one /."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or "\\" in spec


def check_pretrained(spec: str, key: str) -> None:
    """Before a run writes anything: a local checkpoint exists and has a config.json that transformers reads.

    A hub id (`org/name`, no such local path) is checked by loading its config, which reads the local cache and
    needs the network only when the user allows it (HF_HUB_OFFLINE unset).
    """
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise RestError(
                f"{key}: {spec} is a file; give the directory that save_pretrained wrote (with config.json)"
            )
        if not (p / "config.json").is_file():
            what = "is an empty directory" if not any(p.iterdir()) else "has no config.json"
            raise RestError(
                f"{key}: {spec} {what}; give a directory that save_pretrained wrote (config.json, weights, tokenizer)"
            )
    elif looks_like_path(spec):
        raise RestError(f"{key}: {spec} does not exist; fix the path (relative paths start at the current directory)")
    try:
        with quiet():
            AutoConfig.from_pretrained(str(p) if p.exists() else spec)
    except Exception as exc:  # OSError, ValueError, huggingface_hub's validation errors: all "not loadable"
        if not p.exists():
            raise RestError(
                f"{key}: {spec} is no local path (it does not exist) and does not load as a hub id: {_brief(exc)}"
            ) from None
        raise RestError(f"{key}: cannot load a model config from {spec}: {_brief(exc)}") from None
