"""Checks before a run writes anything: every file and model a config names can be read, as the run will read it.

    check_run_inputs(cfg)   # RestError naming the config key, the file and the fix; nothing written yet

Data splits (columns, empty rows, duplicates), the policy (`model.architecture` parses and transformers knows it,
or `model.pretrained` is a loadable checkpoint), the reward's artifacts (a learned reward model exists and
verifies; improve.token_weights names one that scores tokens), tracking (online needs a key), the device (a GPU
that is there), LoRA's target modules (names the model has) and the Grow engine (vLLM: a decoder-only policy and an
interpreter that has vllm). A bad value found only after the run directory exists would leave a directory that
then refuses the corrected config, with a Prefect traceback in between.
"""

from __future__ import annotations

from rest.config import RunConfig
from rest.data import grow_sources, load_split
from rest.engines import check_vllm
from rest.hf import check_architecture, check_lora_targets, check_pretrained, model_config, module_names
from rest.models import resolve_device
from rest.rewards import artifact_dependencies, check_token_scores, needs_reference
from rest.tracking import check_tracking


def check_run_inputs(cfg: RunConfig) -> None:
    load_split(cfg.data.train, "data.train")
    load_split(cfg.data.valid, "data.valid")
    load_split(cfg.data.test, "data.test")
    if cfg.grow.steps > 0:
        grow_sources(cfg.data, need_reference=needs_reference(cfg.reward))
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, "model.pretrained")
    else:
        check_architecture(cfg.model.architecture, "model.architecture")
    artifact_dependencies(cfg.reward)
    if cfg.improve.token_weights is not None:
        check_token_scores(cfg.improve.token_weights, cfg.reward, "improve.token_weights")
    check_tracking(cfg.tracking.comet)
    resolve_device(cfg.device, "device")
    names: list[str] = []
    for section in ("bc", "improve"):
        lora = getattr(cfg, section).lora
        if lora is not None and lora.target_modules != "all-linear":
            names = names or module_names(cfg.model)
            check_lora_targets(names, list(lora.target_modules), f"{section}.lora.target_modules")
    if cfg.grow.engine == "vllm":
        check_vllm(cfg, bool(model_config(cfg.model).is_encoder_decoder))
