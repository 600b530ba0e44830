"""The `torch` engine: our batched decoding loop (rest/models/sampling.py) on the policy's transformers model."""

from __future__ import annotations

from rest.config import RunConfig
from rest.grow.base import EngineSpec
from rest.models import resident
from rest.models.policy import Policy, eval_autocast
from rest.models.sampling import generate


class TorchEngine:
    """Our own batched decoding loop on the policy's transformers model, with the KV cache (rest/models/sampling.py)."""

    name = "torch"
    warm = False  # the policy is in this process: the next one is a new engine (resident.py keeps it loaded)
    failed = False

    def __init__(self, policy: Policy, cfg: RunConfig):
        self.policy = policy
        self.device = cfg.device
        self.model_cfg = cfg.model
        self.batch_size = cfg.grow.batch_size
        self.eval_batch_size = cfg.eval.batch_size
        self.logits_mb = cfg.logits_mb

    def sample(self, sources, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed, on_progress=None):
        with eval_autocast(self.policy, self.model_cfg.dtype):
            return generate(
                self.policy,
                sources,
                self.model_cfg,
                num_samples=num_samples,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                batch_size=self.batch_size,
                seed=seed,
                on_progress=on_progress,
                logits_mb=self.logits_mb,
            )

    def greedy(self, sources, *, max_new_tokens):
        with eval_autocast(self.policy, self.model_cfg.dtype):  # a policy in training: evaluated as if published
            return generate(
                self.policy,
                sources,
                self.model_cfg,
                greedy=True,
                max_new_tokens=max_new_tokens,
                batch_size=self.eval_batch_size,
                logits_mb=self.logits_mb,
            )

    def load_policy(self, policy_dir) -> bool:
        return False  # not warm: engine_for makes a new engine on the next policy

    def suspend(self) -> None:
        pass  # not warm: engines.suspend closes it

    def close(self) -> None:
        pass  # the model goes with the engine


# The policy an Improve step just published is still in memory (rest/models/resident.py): no reload.
ENGINE = EngineSpec(
    "torch",
    lambda policy_dir, cfg: TorchEngine(resident.get(policy_dir, device=cfg.device, dtype=cfg.model.dtype), cfg),
)
