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

import logging

import pandas as pd

from rest.config import RunConfig, is_function_reference, spec_of
from rest.data.splits import grow_sources, load_split
from rest.errors import RestError
from rest.grow.engines import engine_spec
from rest.models.checkpoints import (
    check_architecture,
    check_lora_targets,
    check_pretrained,
    model_config,
    module_names,
)
from rest.models.policy import encode_prompts, load_tokenizer, resolve_device
from rest.models.tokenizer import train_tokenizer
from rest.reporting.tracking import check_tracking
from rest.rewards.components import (
    artifact_dependencies,
    check_token_scores,
    needs_reference,
)

log = logging.getLogger("rest")


def check_run_inputs(cfg: RunConfig) -> None:
    splits = {
        key: load_split(getattr(cfg.data, key.split(".")[1]), key) for key in ("data.train", "data.valid", "data.test")
    }
    if cfg.grow.steps > 0:
        splits["grow sources"] = grow_sources(cfg.data, need_reference=needs_reference(cfg.reward))
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, "model.pretrained")
    else:
        check_architecture(cfg.model.architecture, "model.architecture")
    for line in text_fit_warnings(cfg, splits):
        log.warning(line)
    artifact_dependencies(cfg.reward)
    check_reward_functions(cfg, splits)
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
    engine_spec(cfg.grow.engine).check(cfg)


def check_reward_functions(cfg: RunConfig, splits: dict[str, pd.DataFrame]) -> None:
    """Each reward function of the user's imports and finds the columns it requires in every split it scores
    (validation, test, the Grow sources); so does `code` (its `tests`), whose sandbox must work here."""
    for name in cfg.reward.components:
        needs = spec_of(name, cfg.reward.servers, cfg.reward.models).columns
        if not (needs or is_function_reference(name) or name in cfg.reward.models):
            continue
        if is_function_reference(name):
            from rest.rewards.functions import check_function_columns
        for key, df in splits.items():
            if key == "data.train":
                continue  # trained on, never scored
            where = key if key == "grow sources" else f"{key} ({getattr(cfg.data, key.split('.')[1])})"
            available = [c for c in df.columns if c not in ("source", "reference")]
            if is_function_reference(name):
                check_function_columns(name, available, where)
            elif missing := [c for c in needs if c not in available]:
                raise RestError(
                    f"reward.components: `{name}` reads column(s) {', '.join(missing)}, which {where} lacks (its "
                    f"columns: {', '.join(available)}); add them to that split, or choose another reward"
                )
        if name in cfg.reward.models:
            from rest.rewards.pretrained import check_pretrained_rm

            check_pretrained_rm(name, cfg.reward.models[name])
        if name == "code":
            from rest.rewards.sandbox import check_sandbox

            check_sandbox()


def text_fit_warnings(cfg: RunConfig, splits: dict[str, pd.DataFrame]) -> list[str]:
    """What the tokenizer does to the data without a word, said before training: sources longer than
    model.max_source_tokens (cut), training targets longer than model.max_target_tokens (cut), and characters the
    tokenizer cannot represent (turned into its unknown token). One line each: the count, an example, the key."""
    train = splits["data.train"]
    if cfg.model.pretrained:
        tok = load_tokenizer(cfg.model.pretrained, "model.pretrained")
    else:  # the tokenizer policy-0 gets: trained on the train split's texts (its alphabet is theirs)
        tok = train_tokenizer(train["source"].tolist() + train["reference"].tolist(), cfg.model.vocab_size)
    is_encoder_decoder = bool(model_config(cfg.model).is_encoder_decoder)
    whole = cfg.model.model_copy(update={"max_source_tokens": 1 << 30})  # lengths before the cut
    unk = tok.unk_token_id
    long_sources, unknown = [], []  # (split, row, source_id, length or text)
    n_sources = 0
    for key, df in splits.items():
        ids = encode_prompts(tok, is_encoder_decoder, df["source"].tolist(), whole)
        n_sources += len(ids)
        for row, (sid, seq) in enumerate(zip(df["source_id"], ids)):
            if len(seq) > cfg.model.max_source_tokens:
                long_sources.append((key, row, sid, len(seq)))
            if unk is not None and unk in seq:
                unknown.append((key, row, sid, df["source"].iloc[row]))
    targets = tok(train["reference"].tolist(), add_special_tokens=False)["input_ids"]
    long_targets = [
        (row, sid, len(t) + 1)
        for row, (sid, t) in enumerate(zip(train["source_id"], targets))
        if len(t) + 1 > cfg.model.max_target_tokens
    ]  # + EOS, as training appends it
    if unk is not None:
        unknown += [
            ("data.train", row, sid, train["reference"].iloc[row])
            for row, (sid, t) in enumerate(zip(train["source_id"], targets))
            if unk in t
        ]
    lines = []
    if long_sources:
        key, row, sid, n = long_sources[0]
        longest = max(n for *_, n in long_sources)
        lost = "start" if not is_encoder_decoder else "end"
        lines.append(
            f"{len(long_sources)} of {n_sources} sources are longer than model.max_source_tokens "
            f"({cfg.model.max_source_tokens} tokens) and lose their {lost} (first: {key} row {row}, {sid}, "
            f"{n} tokens; the longest has {longest}): raise model.max_source_tokens to keep them whole"
        )
    if long_targets:
        row, sid, n = long_targets[0]
        lines.append(
            f"{len(long_targets)} of {len(train)} training references are longer than model.max_target_tokens "
            f"({cfg.model.max_target_tokens} tokens with EOS) and are cut (first: data.train row {row}, {sid}, "
            f"{n} tokens): raise model.max_target_tokens to train on them whole"
        )
    if unknown:
        key, row, sid, text = unknown[0]
        chars = [c for c in dict.fromkeys(text) if unk in tok(c, add_special_tokens=False)["input_ids"]]
        shown = " ".join(repr(c) for c in chars[:5]) or "(a sequence of characters)"
        fix = (
            "the tokenizer learns its characters from data.train: put text with them there, use a pretrained "
            "model whose tokenizer has them (model.pretrained), or clean them from the data"
            if not cfg.model.pretrained
            else "use a model whose tokenizer has them (byte-level BPE has every character), or clean them from the "
            "data"
        )
        lines.append(
            f"{len(unknown)} {'text holds' if len(unknown) == 1 else 'texts hold'} characters the tokenizer cannot "
            "represent, which it turns into "
            f"{tok.unk_token} (first: {key} row {row}, {sid}: {shown}): {fix}"
        )
    return lines
