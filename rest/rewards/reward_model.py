"""Learned reward models: a sequence-classification model with one output that scores (source, completion).

    rest reward train --config configs/reward-numbers.yaml        # -> runs/rm-numbers/ (an artifact)
    rm = load_reward_model("runs/rm-numbers"); rm.score(["23"], ["dreiundzwanzig"])   # array([0.99...])

Four objectives (`objective:` in the config):
- regression: mean squared error to a score column of Grow shards (e.g. `reward_chrf`): the model learns to
  predict chrF from (source, completion), so the reward no longer needs the reference. Its reward is the output
  clipped to [0, 1].
- bradley_terry: the pairwise loss of InstructGPT on each source's completions ranked by the score column. A batch
  is a set of whole sources: every distinct completion of a source is scored once and all K-choose-2 pairs of it
  are formed inside the batch (shuffled single pairs overfit: each completion would be seen K-1 times). Its reward
  is sigmoid(output).
- classification: binary cross-entropy on a 0/1 column, e.g. whether an output breaks a rule (Sparrow's rule
  models): its output is sigmoid(output) = P(1), and `reward.rules` scores 1 - P(violation) with it. It also
  reports held-out accuracy at 0.5.
- seq2seq: sequence MLE of a model (encoder-decoder or decoder-only) that reads (source, completion) and writes the
  source's best
  completion in the shards (rest.seq2seq_rm): its reward is the share of the completion's tokens before the first
  place its correction departs from it, with the per-token scores alongside.

All report held-out pairwise accuracy: on sources held out by a hash of their id, the fraction of pairs of
completions with different scores that the model orders the way the scores do (a tie in the model counts 1/2).

The artifact is a `save_pretrained` directory (model + tokenizer) plus `reward.json` (objective and output
transform), `metrics.json`, `config.yaml` and `_manifest.json`, written last: a killed training leaves only a
hidden staging directory, never a directory that looks finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tokenizers import processors
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import BaseModelOutput

from rest.artifacts import manifests
from rest.config import RewardModelConfig, dump_config
from rest.data.batching import epoch_batches
from rest.errors import RestError
from rest.models.checkpoints import quiet, read_architecture, save
from rest.models.policy import resolve_device
from rest.models.tokenizer import made_by_train_tokenizer, train_tokenizer
from rest.models.tokenizer import pad as pad_ids
from rest.rewards.metrics import SENTENCE_METRICS
from rest.rewards.seq2seq_rm import (
    Seq2SeqRewardModel,
    best_targets,
    build_seq2seq_reward_model,
    load_seq2seq_reward_model,
)
from rest.training.loop import lr_factor

log = logging.getLogger("rest")
KIND = manifests.REWARD_MODEL
REWARD_FILE = "reward.json"
OUTPUTS = {"regression": "clip01", "bradley_terry": "sigmoid", "classification": "sigmoid", "seq2seq": "clip01"}


# ---------------------------------------------------------------------------------------------------------------
# Data: distinct completions per source, and the held-out split


def load_comparisons(data_cfg) -> tuple[pd.DataFrame, list[str]]:
    """Every distinct (source, completion) of the shards with its score, and the parent ids (grow manifests).

    Columns: source_id, source, reference, completion, score. A completion sampled several times counts once (its
    score is
    the same every time for a deterministic reward; the mean otherwise).
    """
    frames, parents = [], []
    for spec in data_cfg.shards:
        path = Path(spec)
        if not path.exists():
            raise RestError(
                f"data.shards: {spec} does not exist; point it at a Grow step directory such as runs/numbers/grow-1"
            )
        manifest = manifests.read_manifest(path) if path.is_dir() else None
        if path.is_dir() and manifest is None:
            raise RestError(
                f"data.shards: {spec} has no {manifests.MANIFEST}: that Grow step is not finished; finish it first"
            )
        df = pd.read_parquet(path)
        need = ["source_id", "source", "completion", data_cfg.score_column] + (
            ["reference"] if data_cfg.negatives else []
        )
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise RestError(
                f"data.shards: {spec} has no column(s) {', '.join(missing)} (columns: {', '.join(df.columns)}); "
                "data.score_column names the score to learn, e.g. reward_chrf"
            )
        bad = df[data_cfg.score_column].isna()
        if bad.any():
            raise RestError(
                f"data.shards: {spec}: `{data_cfg.score_column}` is missing in {int(bad.sum())} rows (first: row "
                f"{int(bad.to_numpy().nonzero()[0][0])})"
            )
        frames.append(df[need].rename(columns={data_cfg.score_column: "score"}))
        parents.append(manifest["id"] if manifest else manifests.sha256_file(path)[:16])
    df = pd.concat(frames, ignore_index=True)
    if "reference" not in df.columns:
        df["reference"] = None
    df = df.groupby(["source_id", "completion"], sort=True, as_index=False, dropna=False).agg(
        source=("source", "first"), reference=("reference", "first"), score=("score", "mean")
    )
    return df[["source_id", "source", "reference", "completion", "score"]], parents


def add_negatives(df: pd.DataFrame, data_cfg, k: int, seed: int) -> pd.DataFrame:
    """`df` plus, per source, k completions of other sources scored against this source's reference.

    Other sources of the same length (in characters) are preferred: on the numbers task they share most words,
    so their chrF against this reference spreads over the whole range. Rows get `negative` = True.
    """
    metric = data_cfg.score_column.removeprefix("reward_")
    if metric not in SENTENCE_METRICS:
        raise RestError(
            "data.negatives needs data.score_column to be reward_<metric> with a metric of "
            f"{', '.join(SENTENCE_METRICS)} "
            f"(it rescored the new pairs with it); got {data_cfg.score_column}. Set data.negatives: 0"
        )
    sources = df.drop_duplicates("source_id")[["source_id", "source", "reference"]].reset_index(drop=True)
    if sources["reference"].isna().any():
        raise RestError(
            "data.negatives scores other sources' completions against each reference, but some shards have no "
            "reference; set data.negatives: 0"
        )
    rng = np.random.default_rng(seed)
    owner = df["source_id"].to_numpy()
    completions = df["completion"].to_numpy()
    length = df["source"].str.len().to_numpy()
    by_length = {n: np.nonzero(length == n)[0] for n in np.unique(length)}
    rows = []
    for src in sources.itertuples():
        pool = by_length[len(src.source)]
        pool = pool[owner[pool] != src.source_id]
        if len(pool) < k:
            pool = np.nonzero(owner != src.source_id)[0]
        for j in rng.choice(pool, size=min(k, len(pool)), replace=False):
            rows.append((src.source_id, src.source, src.reference, completions[j]))
    neg = pd.DataFrame(rows, columns=["source_id", "source", "reference", "completion"])
    neg["score"] = SENTENCE_METRICS[metric](
        neg["source"].tolist(), neg["completion"].tolist(), neg["reference"].tolist()
    )
    neg["negative"] = True
    out = pd.concat([df.assign(negative=False), neg], ignore_index=True)
    # a sampled completion that is also some other source's completion stays once, as the source's own sample
    return out.drop_duplicates(["source_id", "completion"], keep="first").reset_index(drop=True)


def held_out(source_ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the sources held out: a hash of the id, so the split does not move when shards are added."""

    def unit(sid: str) -> float:
        return int.from_bytes(hashlib.sha256(f"rm-valid/{sid}".encode()).digest()[:8], "little") / 2**64

    return np.array([unit(s) < fraction for s in source_ids.astype(str)])


def pairs_of(scores: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) of one source's completions with scores[i] > scores[j] + min_gap: (better, worse)."""
    i, j = np.nonzero(scores[:, None] > scores[None, :] + min_gap)
    return i, j


def bradley_terry_loss(rewards: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over sources of the mean over its pairs of -log sigmoid(r_better - r_worse).

    `groups`: per source, index tensors (better, worse) into `rewards`. One pair with rewards 2 and 0 gives
    -log sigmoid(2) = 0.1269; with 0 and 2 (ranked the wrong way) -log sigmoid(-2) = 2.1269.
    """
    per_source = [
        -torch.nn.functional.logsigmoid(rewards[better] - rewards[worse]).mean()
        for better, worse in groups
        if len(better)
    ]
    if not per_source:
        return rewards.sum() * 0.0
    return torch.stack(per_source).mean()


def pairwise_accuracy(df: pd.DataFrame, predicted: np.ndarray, min_gap: float = 0.0) -> tuple[float | None, int]:
    """Fraction of within-source pairs with different scores that `predicted` orders the same way (ties: 1/2)."""
    hits, n = 0.0, 0
    scores = df["score"].to_numpy()
    for _, idx in df.groupby("source_id", sort=False).indices.items():
        better, worse = pairs_of(scores[idx], min_gap)
        if len(better):
            p = predicted[idx]
            diff = p[better] - p[worse]
            hits += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            n += len(better)
    return (hits / n if n else None), n


# ---------------------------------------------------------------------------------------------------------------
# The model


@dataclass
class RewardModel:
    model: Any
    tokenizer: Any
    objective: str
    max_tokens: int
    path: str | None = None

    def encode(self, sources: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
        """Encoder-only and decoder-only models read the pair as one sequence (the tokenizer's pair template)."""
        encoded = self.tokenizer(
            list(sources),
            list(completions),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def raw(self, sources: list[str], completions: list[str]) -> torch.Tensor:
        """The model's output per pair (shape [B]), with gradients when the model trains."""
        if self.model.config.is_encoder_decoder:
            return self._raw_seq2seq(list(sources), list(completions))
        return self.model(**self.encode(sources, completions)).logits[:, 0].float()

    def _raw_seq2seq(self, sources: list[str], completions: list[str]) -> torch.Tensor:
        """Encoder-decoder models read the source with the encoder and the completion with the decoder, as the
        policy does when it writes it; the head reads the decoder's state at the completion's EOS.

        The stock *ForSequenceClassification (Bart, mBART, ...) feeds one text to both halves and finds the EOS in
        `input_ids`; given `encoder_outputs`, `input_ids` is used for nothing else, so it gets the decoder's ids.
        """
        tok, config = self.tokenizer, self.model.config
        pad, eos, start = tok.pad_token_id, tok.eos_token_id, config.decoder_start_token_id
        unique = list(dict.fromkeys(sources))  # a batch holds every completion of a source: encode it once
        index = {u: i for i, u in enumerate(unique)}
        device = self.model.device
        row = torch.tensor([index[s] for s in sources], dtype=torch.long, device=device)
        src = [ids[: self.max_tokens] for ids in tok(unique)["input_ids"]]
        dec = [
            [start] + ids[: self.max_tokens - 2] + [eos]
            for ids in tok(completions, add_special_tokens=False)["input_ids"]
        ]
        src_ids, src_mask = (t.to(device) for t in pad_ids(src, pad))
        dec_ids, dec_mask = (t.to(device) for t in pad_ids(dec, pad))
        encoded = self.model.get_encoder()(input_ids=src_ids, attention_mask=src_mask).last_hidden_state
        encoder_outputs = BaseModelOutput(last_hidden_state=encoded[row])
        src_mask = src_mask[row]
        out = self.model(
            input_ids=dec_ids,
            attention_mask=src_mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask,
            encoder_outputs=encoder_outputs,
            use_cache=False,
        )
        return out.logits[:, 0].float()

    def transform(self, raw: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(raw, dtype=torch.float64, device="cpu")
        out = torch.sigmoid(x) if OUTPUTS[self.objective] == "sigmoid" else x.clamp(0.0, 1.0)
        return out.numpy()

    def score(self, sources, completions, batch_size: int = 512) -> np.ndarray:
        """The reward of each (source, completion), in [0, 1]."""
        return self.transform(_raw_no_grad(self, list(sources), list(completions), batch_size))


def _pair_template(tokenizer) -> None:
    """`<s> source </s> completion </s>`, token type 0 then 1 (the from-scratch tokenizer knows single only)."""
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s>:0 $A:0 </s>:0 $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)]
    )


def build_reward_model(cfg: RewardModelConfig, texts: list[str]) -> RewardModel | Seq2SeqRewardModel:
    if cfg.objective == "seq2seq":
        return build_seq2seq_reward_model(cfg.model, texts, cfg.seed)
    if cfg.model.pretrained:
        try:
            with quiet():
                tokenizer = AutoTokenizer.from_pretrained(cfg.model.pretrained)
                model = AutoModelForSequenceClassification.from_pretrained(cfg.model.pretrained, num_labels=1)
        except (OSError, ValueError) as exc:
            raise RestError(f"model.pretrained: cannot load {cfg.model.pretrained}: {exc}") from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if made_by_train_tokenizer(tokenizer) and not model.config.is_encoder_decoder:
            _pair_template(tokenizer)  # a decoder-only policy of ours (InstructGPT starts the RM from the SFT policy)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        tokenizer = train_tokenizer(texts, cfg.model.vocab_size)
        arch = read_architecture(cfg.model.architecture, "model.architecture")
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(
            model_type, vocab_size=len(tokenizer), num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, **arch
        )
        if config.is_encoder_decoder:
            config.decoder_start_token_id = 1
        else:
            _pair_template(tokenizer)
        torch.manual_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model.config.problem_type = "regression"
    return RewardModel(model, tokenizer, cfg.objective, cfg.model.max_tokens)


def check_reward_model(path: str | Path, key: str = "reward model") -> dict[str, Any]:
    """The verified manifest of a finished reward-model artifact at `path`, or a RestError that says how to make one."""
    return manifests.require(Path(path), KIND, key, manifests.HOW_TO_MAKE[KIND])


@functools.lru_cache(maxsize=4)
def _load(path: str, manifest_id: str, device: str) -> RewardModel | Seq2SeqRewardModel:
    info = json.loads((Path(path) / REWARD_FILE).read_text())
    if info["objective"] == "seq2seq":
        return load_seq2seq_reward_model(path, info["max_tokens"], device)
    with quiet():
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(resolve_device(device))
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return RewardModel(model, tokenizer, info["objective"], info["max_tokens"], path)


def load_reward_model(path: str | Path, device: str = "cpu") -> RewardModel | Seq2SeqRewardModel:
    """Load (once per process, artifact id and device) the reward model `rest reward train` wrote at `path`."""
    manifest = check_reward_model(path)
    return _load(str(Path(path)), manifest["id"], device)


# ---------------------------------------------------------------------------------------------------------------
# Training


def _batches(groups: list[np.ndarray], batch_size: int, steps: int, rng: np.random.Generator) -> list[list[int]]:
    return [list(b) for b in epoch_batches(len(groups), min(batch_size, len(groups)), steps, rng)]


def _evaluate(rm: RewardModel, df: pd.DataFrame, clear_gap: float) -> dict[str, Any]:
    """Pairwise accuracy (all pairs with different scores, and those at least clear_gap apart), MSE and Pearson
    of the reward against the score, on the sampled completions only (added negatives are training data)."""
    if "negative" in df.columns:
        df = df[~df["negative"]].reset_index(drop=True)
    if df.empty:
        return {"rows": 0, "pairs": 0, "pairwise_accuracy": None}
    raw = _raw_no_grad(rm, df["source"].tolist(), df["completion"].tolist())
    reward = rm.transform(raw)
    acc, n = pairwise_accuracy(df, raw)
    clear, n_clear = pairwise_accuracy(df, raw, clear_gap - 1e-12)
    target = df["score"].to_numpy()
    out: dict[str, Any] = {
        "rows": len(df),
        "pairs": n,
        "pairwise_accuracy": None if acc is None else round(acc, 4),
        "clear_pairs": n_clear,
        "pairwise_accuracy_clear": None if clear is None else round(clear, 4),
    }
    out["mse"] = round(float(np.mean((reward - target) ** 2)), 5)
    if rm.objective == "classification":
        out["accuracy"] = round(float(np.mean((reward >= 0.5) == (target >= 0.5))), 4)
        out["positive_fraction"] = round(float(np.mean(target >= 0.5)), 4)
    if rm.objective == "seq2seq":
        # how often it keeps a source's best completion as it is (reward 1), and flags a worse one (reward < 1)
        best = target == df.groupby("source_id", sort=False)["score"].transform("max").to_numpy()
        out["keeps_best"] = round(float(np.mean(reward[best] == 1.0)), 4)
        out["flags_worse"] = round(float(np.mean(reward[~best] < 1.0)), 4) if (~best).any() else None
    if len(df) > 1 and np.std(target) > 0 and np.std(reward) > 0:
        out["pearson"] = round(float(np.corrcoef(reward, target)[0, 1]), 4)
    return out


@torch.no_grad()
def _raw_no_grad(rm: RewardModel, sources: list[str], completions: list[str], batch_size: int = 512) -> np.ndarray:
    """The raw outputs, in eval mode (no dropout), `batch_size` pairs at a time."""
    rm.model.eval()
    out = [
        rm.raw(sources[k : k + batch_size], completions[k : k + batch_size]).cpu().numpy()
        for k in range(0, len(sources), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train, evaluate and publish the reward model of `cfg` at cfg.out. Returns its manifest.

    Skips the work when cfg.out already holds a reward model made from the same config and shards.
    """
    out = Path(cfg.out)
    df, parents = load_comparisons(cfg.data)
    cfg_dump = cfg.model_dump(mode="json")
    cfg_slice = {k: v for k, v in cfg_dump.items() if k not in ("out", "device")}  # where it trains is not what
    done = manifests.read_manifest(out)
    if done is not None:
        if (
            done.get("kind") == KIND
            and done["config"] == cfg_slice
            and done["parents"] == parents
            and not manifests.verify(out)
        ):
            log.info(f"{out}: already trained from this config and these shards")
            return done
        raise RestError(
            f"{out} already holds another artifact (other config, shards or files); pick another `out` or delete it"
        )
    if cfg.objective == "regression":
        lo, hi = float(df["score"].min()), float(df["score"].max())
        if lo < 0 or hi > 1:
            raise RestError(
                f"data.score_column `{cfg.data.score_column}` ranges over [{lo:g}, {hi:g}]; regression learns a "
                "reward in "
                "[0, 1]: normalise the column, or use objective: bradley_terry (it needs only the order)"
            )
    if cfg.objective == "classification":
        labels = set(np.unique(df["score"].to_numpy()).tolist())
        if not labels <= {0.0, 1.0}:
            raise RestError(
                f"data.score_column `{cfg.data.score_column}` holds {sorted(labels)[:5]}...; classification learns a "
                "0/1 label (1 = the rule is broken): map the column to 0 and 1, or use objective: regression"
            )
    valid_mask = held_out(df["source_id"], cfg.data.valid_fraction)
    train_df, valid_df = df[~valid_mask].reset_index(drop=True), df[valid_mask].reset_index(drop=True)
    if cfg.data.negatives:
        train_df = add_negatives(train_df, cfg.data, cfg.data.negatives, cfg.seed)
    if cfg.objective == "seq2seq":
        train_df = best_targets(train_df)  # correction pairs (-> the source's best) and identity pairs (best -> best)
    groups = list(train_df.groupby("source_id", sort=True).indices.values())
    scores = train_df["score"].to_numpy()
    sources, completions = train_df["source"].to_numpy(), train_df["completion"].to_numpy()
    targets = train_df["target"].to_numpy() if cfg.objective == "seq2seq" else None
    if cfg.objective == "bradley_terry":
        groups = [g for g in groups if len(pairs_of(scores[g], cfg.data.min_gap)[0])]
    if not groups:
        raise RestError(
            f"{', '.join(cfg.data.shards)}: no training source has two completions whose `{cfg.data.score_column}` "
            f"differ by more than data.min_gap={cfg.data.min_gap}: nothing to rank (sample more per source)"
        )
    rm = build_reward_model(cfg, train_df["source"].drop_duplicates().tolist() + train_df["completion"].tolist())
    rm.model.to(resolve_device(cfg.device))
    log.info(
        f"reward model ({cfg.objective}): {len(train_df)} completions "
        f"({int(train_df.get('negative', pd.Series(dtype=bool)).sum())} "
        f"of other sources) of {len(groups)} sources to train on, "
        f"{len(valid_df)} held out; {sum(p.numel() for p in rm.model.parameters()):,} parameters"
    )
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(groups, cfg.train.batch_size, cfg.train.steps, rng)
    opt = torch.optim.AdamW(rm.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.train.warmup(len(batches)), len(batches)))
    torch.manual_seed(cfg.seed)
    rm.model.train()
    losses, started = [], time.perf_counter()
    for step, batch in enumerate(batches):
        idx = np.concatenate([groups[b] for b in batch])
        if cfg.objective == "seq2seq":
            loss = rm.nll(sources[idx].tolist(), completions[idx].tolist(), targets[idx].tolist())
        elif cfg.objective in ("regression", "classification"):
            raw = rm.raw(sources[idx].tolist(), completions[idx].tolist())
            target = torch.tensor(scores[idx], dtype=torch.float32, device=raw.device)
            loss = (
                torch.nn.functional.mse_loss(raw, target)
                if cfg.objective == "regression"
                else torch.nn.functional.binary_cross_entropy_with_logits(raw, target)
            )
        else:
            raw = rm.raw(sources[idx].tolist(), completions[idx].tolist())
            offsets = np.cumsum([0] + [len(groups[b]) for b in batch])
            pair_idx = []
            for k, b in enumerate(batch):
                better, worse = pairs_of(scores[groups[b]], cfg.data.min_gap)
                pair_idx.append(
                    (
                        torch.as_tensor(better + offsets[k], device=raw.device),
                        torch.as_tensor(worse + offsets[k], device=raw.device),
                    )
                )
            loss = bradley_terry_loss(raw, pair_idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, len(batches) // 5) == 0:
            log.info(f"reward model step {step + 1}/{len(batches)}: loss {np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - started
    rm.model.eval()
    metrics = {
        "objective": cfg.objective,
        "score_column": cfg.data.score_column,
        "valid": _evaluate(rm, valid_df, cfg.data.clear_gap),
        "train": _evaluate(rm, train_df, cfg.data.clear_gap),
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "steps": len(batches),
        "seconds": round(seconds, 1),
    }
    stage = manifests.staging(out)
    manifests.clear(out)
    stage.mkdir(parents=True)
    save(rm.model, stage)
    save(rm.tokenizer, stage)
    manifests.write_json_atomic(
        stage / REWARD_FILE,
        {
            "objective": cfg.objective,
            "output": OUTPUTS[cfg.objective],
            "max_tokens": cfg.model.max_tokens,
            "score_column": cfg.data.score_column,
        },
    )
    manifests.write_json_atomic(stage / "metrics.json", metrics)
    manifests.write_atomic(stage / manifests.CONFIG_FILE, dump_config(cfg).encode())
    os.replace(stage, out)
    return manifests.publish(out, KIND, parents, cfg_slice, {"metrics": metrics}, record=False)
