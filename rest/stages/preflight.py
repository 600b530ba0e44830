"""Checks before a run writes anything: every file and model a config names can be read, as the run will read it.

    check_run_inputs(cfg)   # RestError naming the config key, the file and the fix; nothing written yet

Data splits (columns, empty rows, duplicates), the policy (`model.architecture` parses and transformers knows it,
or `model.pretrained` is a loadable checkpoint), the reward's artifacts (a learned reward model exists and
verifies; improve.token_weights names one that scores tokens), tracking (online needs a key), the device (a GPU
that is there, one for each training process), LoRA's target modules (names the model has) and the Grow engine
(vLLM: a decoder-only policy and an interpreter that has vllm). A bad value found only after the run directory
exists would leave a directory that then refuses the corrected config, with a Prefect traceback in between.
"""

from __future__ import annotations

import logging

import pandas as pd

from rest.config import RunConfig
from rest.data.conversations import conversation, turn_texts
from rest.data.splits import data_split, grow_sources
from rest.errors import RestError
from rest.grow.engines import engine_spec
from rest.models.checkpoints import (
    check_architecture,
    check_lora_targets,
    check_pretrained,
    model_config,
    module_names,
)
from rest.models.policy import apply_template_file, encode_prompts, load_tokenizer, resolve_device, scratch_tokenizer
from rest.reporting.tracking import check_tracking
from rest.rewards.kinds import check_rewards, needs_reference

log = logging.getLogger("rest")


def check_run_inputs(cfg: RunConfig) -> None:
    splits = {f"data.{split}": data_split(cfg.data, split) for split in ("train", "valid", "test")}
    if cfg.grow.steps > 0:
        splits["grow sources"] = grow_sources(cfg.data, need_reference=needs_reference(cfg.reward))
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, "model.pretrained")
    else:
        check_architecture(cfg.model.architecture, "model.architecture")
    for line in [*text_fit_warnings(cfg, splits), *control_warnings(cfg)]:
        log.warning(line)
    check_rewards(cfg.reward, scored_splits(cfg, splits), cfg.improve.token_weights)
    check_tracking(cfg.tracking.comet)
    check_processes(cfg)
    names: list[str] = []
    for section in ("bc", "improve"):
        lora = getattr(cfg, section).lora
        if lora is not None and lora.target_modules != "all-linear":
            names = names or module_names(cfg.model)
            check_lora_targets(names, list(lora.target_modules), f"{section}.lora.target_modules")
    engine_spec(cfg.grow.engine).check(cfg)


def check_processes(cfg: RunConfig) -> None:
    """The device is there, and on GPUs each training process has one: torchrun puts rank r on cuda:r, so with
    more processes than GPUs rank `gpus` would die in `set_device` and the user would read "training failed"."""
    import torch

    device = resolve_device(cfg.device, "device")
    if device.type != "cuda":
        return  # CPU processes (gloo) share the cores
    gpus = torch.cuda.device_count()
    for section in ("bc", "improve"):
        n = getattr(cfg, section).processes
        if n > gpus:
            raise RestError(
                f"{section}.processes: {n}, but torch sees {gpus} GPU(s) and each process trains on one of its own "
                f"(rank r on cuda:r): set {section}.processes to at most {gpus}"
            )


def scored_splits(cfg: RunConfig, splits: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """{where: its columns} of every split a reward scores (validation, test, the Grow sources), as a reward's
    check names them."""
    out = {}
    for key, df in splits.items():
        if key == "data.train":
            continue  # trained on, never scored
        where = key if key == "grow sources" else f"{key} ({getattr(cfg.data, key.split('.')[1])})"
        out[where] = [c for c in df.columns if c not in ("source", "reference")]
    return out


def chat_lines(cfg: RunConfig, tok, is_encoder_decoder: bool, splits: dict[str, pd.DataFrame]) -> list[str]:
    """The prompt format against the model: a chat template asked for that cannot work (or a conversation without
    one) is a RestError; a tokenizer whose template the config leaves unused, a warning line (an instruct model fed
    plain text samples off its training distribution, and nothing else would say so)."""
    m = cfg.model
    where = f"model.pretrained ({m.pretrained})" if m.pretrained else "the tokenizer trained from scratch"
    if m.chat and is_encoder_decoder:
        raise RestError(
            "model.chat_template: an encoder-decoder model reads its source as text, with no chat template; "
            "drop model.chat_template (and map data.columns.source to a text column), or use a decoder-only model"
        )
    if m.chat_template == "tokenizer" and not tok.chat_template:
        fix = "a template file (model.chat_template: path/to/template.jinja)" if not m.pretrained else "a file"
        raise RestError(
            f"model.chat_template: tokenizer, but {where} has no chat template; give {fix}, or set it to none"
        )
    if not m.chat:
        for key, df in splits.items():
            talks = df["source"].map(lambda s: conversation(s) is not None)
            if talks.any():
                row = int(talks.to_numpy().nonzero()[0][0])
                raise RestError(
                    f"{key}: row {row} is a conversation (a messages column), which only a chat template renders: "
                    "set model.chat_template (tokenizer, or a .jinja file)"
                )
    lines = []
    if m.chat_template is None and tok.chat_template and not is_encoder_decoder:
        lines.append(
            f"{where} has a chat template, but prompts are plain model.prompt_template text ({m.prompt_template!r}): "
            "an instruct model sampled off its template writes off-distribution; set model.chat_template: "
            "tokenizer (or none to keep plain prompts and silence this)"
        )
    if m.chat:
        turns = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
        rendered = tok.apply_chat_template(turns, tokenize=False, **m.chat_template_kwargs)
        after = rendered.split("2")[-1]
        if tok.eos_token and tok.eos_token not in after:
            lines.append(
                f"the chat template does not end an assistant turn with the tokenizer's EOS ({tok.eos_token!r}; "
                f"the turn ends {after.strip()!r}): sampling stops at EOS, so completions may run on to "
                "max_new_tokens; use a tokenizer whose eos_token ends the turn (instruct checkpoints do)"
            )
    return lines


def control_warnings(cfg: RunConfig) -> list[str]:
    """The BC control continues BC with `bc`'s optimiser. With no BC before ReST (`bc.steps: 0`, a pretrained base)
    those settings are the from-scratch defaults nobody chose: a control that trains otherwise than the run's Improve
    steps (a learning rate 5x higher, every weight instead of an adapter) is no comparison. One line, the keys."""
    bc, improve = cfg.bc, cfg.improve
    if not cfg.eval.control or bc.steps > 0 or cfg.grow.steps == 0:
        return []

    def how(o) -> str:
        return f"lr {o.lr:g}, {'LoRA' if o.lora else 'every weight'}, {o.batch_size} rows a step"

    if how(bc) == how(improve):
        return []
    return [
        f"eval.control: policy-0 had no BC (bc.steps: 0), so the control trains with bc's settings ({how(bc)}) where "
        f"the run's Improve steps train with {how(improve)}: set bc.lr, bc.lora and bc.batch_size like improve's for "
        "a control on equal footing"
    ]


def text_fit_warnings(cfg: RunConfig, splits: dict[str, pd.DataFrame]) -> list[str]:
    """What the tokenizer does to the data without a word, said before training: sources longer than
    model.max_source_tokens (cut), training targets longer than model.max_target_tokens (cut), and characters the
    tokenizer cannot represent (turned into its unknown token). One line each: the count, an example, the key."""
    train = splits["data.train"]
    if cfg.model.pretrained:
        tok = load_tokenizer(cfg.model.pretrained, "model.pretrained")
        apply_template_file(tok, cfg.model)
    else:  # the tokenizer policy-0 gets: trained on the train split's texts (its alphabet is theirs)
        tok = scratch_tokenizer(turn_texts(train["source"].tolist()) + train["reference"].tolist(), cfg.model)
    is_encoder_decoder = bool(model_config(cfg.model).is_encoder_decoder)
    lines = chat_lines(cfg, tok, is_encoder_decoder, splits)
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
