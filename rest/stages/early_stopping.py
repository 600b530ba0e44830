"""Validation in the middle of training: BC's early stopping (bc.valid_every, bc.patience) and the BC control's
curve."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from rest.config import RunConfig
from rest.evaluation.policy import evaluate, selection_score
from rest.grow import engines
from rest.models.policy import Policy
from rest.seeds import derive_seed
from rest.stages.common import valid_split

log = logging.getLogger("rest")


def validate_in_training(policy: Policy, cfg: RunConfig, valid_df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Validation metrics and greedy outputs of a policy in the middle of its training (early stopping, the BC
    control's curve). Its random stream (dropout's) and its train mode go on as if nothing happened, so the
    weights are those of training without it."""
    training = policy.model.training
    with torch.random.fork_rng(devices=[]):
        out = evaluate(engines.engine_on(policy, cfg), valid_df, cfg, derive_seed(cfg.seed, "eval", "valid"))
    policy.model.train(training)
    return out


class EarlyStopping:
    """bc.valid_every / bc.patience as fit's on_step: validates every `every` steps, keeps the best checkpoint by
    eval.select_by (earliest on ties), and stops after `patience` validations in a row without a better one."""

    def __init__(self, policy: Policy, cfg: RunConfig, every: int, patience: int):
        self.policy, self.cfg, self.every, self.patience = policy, cfg, every, patience
        self.valid_df, self.score = valid_split(cfg), selection_score
        self.best: dict[str, Any] = {}
        self.bad, self.curve = 0, []

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.every:
            return False
        valid, _ = validate_in_training(self.policy, self.cfg, self.valid_df)
        score = self.score(valid, self.cfg)
        self.curve.append({"steps": step, "score": score, "exact_match": valid["exact_match"]})
        if not self.best or score > self.best["score"]:
            self.best = {"score": score, "steps": step, "state": host_copy(self.policy.model.state_dict())}
            self.bad = 0
        else:
            self.bad += 1
        log.info(f"policy-0: step {step} validation {score:.4f} (best at {self.best['steps']})")
        return self.bad >= self.patience

    def restore_best(self, steps_taken: int) -> None:
        """Load the best checkpoint unless training ended there (or nothing was validated)."""
        if self.best and self.best["steps"] != steps_taken:
            self.policy.model.load_state_dict(self.best["state"])


def host_copy(state: dict) -> dict:
    """A copy of a state dict in host memory: the best weights so far must not hold a second model's worth of GPU
    memory while training goes on (load_state_dict copies them back to the model's device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
