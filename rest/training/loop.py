"""The training loop: an objective on batches, AdamW, warm-up then cosine decay. BC, Improve and the reward models
share it.

    stats = train(policy, batches, cfg.improve, cfg.model, seed=1, objective=NLL())

It only trains: evaluation and publishing are separate phases (rest/stages/), so the loop can run where the
training runs and the rest where the artifact is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rest.config import ModelConfig, PolicyOptimFields, RMTrainConfig
from rest.errors import RestError
from rest.models.policy import Policy, pair_positions, rows_per_pass
from rest.training import distributed
from rest.training.batches import Batch, PairBatch
from rest.training.objectives import NLL, Objective


def with_lora(model, lora):
    """`model` with a fresh LoRA adapter (peft) on `lora.target_modules`; only the adapter trains."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    config = LoraConfig(
        task_type=task,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if lora.target_modules == "all-linear" else list(lora.target_modules),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise RestError(f"lora.target_modules: {exc}") from None


class BaseWeights:
    """The weights a LoRA policy started from, read through the policy itself with its adapter switched off (as
    SuperHF's code does for its KL prior): a reference policy that costs no memory. Eval mode (no dropout), no
    gradient, no parameters of its own (the trainer must not freeze the adapter through it)."""

    def __init__(self, peft_model):
        self.peft = peft_model

    @property
    def device(self):
        return self.peft.device

    def eval(self):
        return self

    def parameters(self):
        return iter(())

    def __call__(self, **inputs):
        was_training = self.peft.training
        self.peft.eval()
        try:
            with self.peft.disable_adapter():
                return self.peft(**inputs)
        finally:
            self.peft.train(was_training)


# bc/improve.precision -> the autocast dtype (fp32: autocast off)
AUTOCAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    policy: Policy | Any,
    batches: Sequence[Any],
    optim: PolicyOptimFields | RMTrainConfig,
    model_cfg: ModelConfig | None,
    seed: int,
    objective: Objective | None = None,
    reference: Policy | None = None,
    on_progress: Callable[[int, float], bool | None] | None = None,
    logits_mb: int | None = None,
) -> dict[str, Any]:
    """Fine-tune `policy` in place on the given batches, one optimiser step each; returns training stats.

    `policy` is a Policy, or anything with a `.model` an objective trains (a reward model: its objectives are in
    rest/rewards/reward_objectives.py); `batches` are what the objective reads (Batch, PairBatch, SourceBatch), each
    with `split` (micro-batches) and `share` (a process's part).

    `objective` defaults to token-mean NLL (BC). `reference` (frozen here) is the policy an objective with
    `needs_reference` compares with; with `optim.lora` it may be `policy` itself, meaning the policy as it was before
    this training: its adapter switched off, no second model in memory. `optim` (a `bc` or `improve` section) also
    says how a step is computed: precision, micro_batch_size, gradient_checkpointing, lora. `logits_mb` (the run's
    budget for one pass's logits, MiB) splits a step of a policy's rows into micro-batches whose logits fit it.
    """
    objective = objective or NLL()
    if objective.needs_reference and reference is None:
        raise ValueError("this objective (kl_beta > 0) needs the reference policy")
    lora = getattr(optim, "lora", None)  # a reward model's train section has none
    if lora is not None:
        start = policy.model
        # the adapter's initial weights come from torch's global generator: seeded here, they are the same whatever
        # this process ran before (a resumed run trains the same adapter as an uninterrupted one)
        torch.manual_seed(seed)
        policy.model = with_lora(start, lora)
        if reference is policy:  # "the policy as it was": the adapter switched off, not a copy
            # BaseWeights stands in for the model: it answers what a Policy asks of its model (device, eval, calls)
            reference = Policy(BaseWeights(policy.model), policy.tokenizer)  # ty: ignore[invalid-argument-type]
    elif reference is policy:
        raise ValueError("the reference may be the policy itself only with LoRA (its adapter switched off)")
    try:
        return _train(policy, batches, optim, model_cfg, seed, objective, reference, on_progress, logits_mb)
    finally:
        if lora is not None:
            # The adapter merged into the weights: the policy is a plain model again, saved and loaded as one.
            merge = getattr(policy.model, "merge_and_unload", None)  # peft's; gone if training failed before the wrap
            policy.model = merge() if merge is not None else start


def pass_positions(policy: Any, batch: Any, model_cfg: ModelConfig | None) -> list[int] | None:
    """Per row of a policy's batch, the positions a training pass computes logits for (a pair of a preference
    batch: both of its sequences, padded alike); None for what is not a policy's batch (a reward model's)."""
    if not isinstance(policy, Policy) or model_cfg is None:
        return None
    if isinstance(batch, Batch):
        return pair_positions(policy, list(batch.sources), list(batch.targets), model_cfg)
    if isinstance(batch, PairBatch):
        n = len(batch.sources)
        both = pair_positions(policy, list(batch.sources) * 2, list(batch.chosen) + list(batch.rejected), model_cfg)
        rows = [2 * max(both[i], both[n + i]) for i in range(n)]
        return rows + pair_positions(policy, list(batch.nll_sources), list(batch.nll_targets), model_cfg)
    return None


def _train(policy, batches, optim, model_cfg, seed, objective, reference, on_progress, logits_mb) -> dict[str, Any]:
    if reference is not None:
        reference.model.eval()
        for p in reference.model.parameters():
            p.requires_grad_(False)
    torch.manual_seed(seed)  # dropout masks
    model = policy.model
    model.train(getattr(objective, "dropout", True))  # a preference loss trains with dropout off
    precision, micro, checkpointing = optim.precision, optim.micro_batch_size, optim.gradient_checkpointing
    device = model.device
    if precision == "fp16" and device.type == "cpu":
        raise RestError("precision: fp16 trains on a GPU; on a CPU use bf16 (or fp32)")
    if precision != "fp32" and any(p.dtype != torch.float32 for p in model.parameters() if p.requires_grad):
        raise RestError(
            f"precision: {precision} autocasts float32 weights; these are {next(model.parameters()).dtype}: "
            "load the policy in float32 to train it"
        )
    autocast = torch.autocast(device.type, dtype=AUTOCAST[precision], enabled=precision != "fp32")
    # fp16's narrow range underflows small gradients: scale the loss up, and the gradients back before clipping.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    rank, world = distributed.world()
    fsdp = world > 1 and getattr(optim, "strategy", "ddp") == "fsdp"
    if world > 1:
        distributed.broadcast_parameters(model)
    if fsdp:
        distributed.shard(model)  # FSDP sums its ranks' gradients itself (and divides by world: see the loss below)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update instead of a few per parameter tensor (3.5x faster on this CPU for the
    # 2.6M default's 137 tensors: 7 ms -> 2 ms a step); torch has it for CPU and CUDA floating-point parameters.
    fused = not fsdp and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim.warmup(len(batches)), len(batches)))
    losses: list[float] = []
    curves: dict[str, list[float]] = {}  # the objective's stats per step (kl, pref_accuracy, ...)
    examples = 0
    started = time.perf_counter()
    policy.token_cache = {}  # each distinct text is tokenized once for the whole run of steps
    try:
        for step, batch in enumerate(batches):
            opt.zero_grad(set_to_none=True)
            # This process's rows of the step (all of them, or its share of `world`), in micro-batches. Unless it is
            # the whole batch in one piece, each piece's loss is normalised by the whole batch's totals, so the
            # pieces' gradients (summed here, then over the ranks) are the whole batch's (up to float sums).
            mine = batch if world == 1 else batch.share(rank, world)
            size = micro if micro is not None and micro < len(mine) else len(mine)
            positions = pass_positions(policy, mine, model_cfg) if logits_mb is not None else None
            if positions:  # fewer rows a pass when their logits would not fit logits_mb
                size = min(size, rows_per_pass(policy, positions, logits_mb))
            parts = mine.split(size) if size < len(mine) else [mine]
            totals = None if world == 1 and len(parts) == 1 else objective.totals(policy, batch, model_cfg)
            step_loss, stats = 0.0, {}
            for part in parts:
                with autocast:
                    loss, part_stats = objective(policy, part, model_cfg, reference, totals)
                # FSDP averages the ranks' gradients (gloo has no pre-scaled sum): x world makes it their sum
                if loss.requires_grad:  # a piece with nothing to learn from (no pair, no labelled row) adds nothing
                    scaler.scale(loss * world if fsdp else loss).backward()
                step_loss += loss.item()
                for k, v in part_stats.items():
                    stats[k] = stats.get(k, 0.0) + v
            if world > 1:
                if not fsdp:
                    distributed.all_reduce_gradients(params)
                step_loss, *summed = distributed.all_reduce_sums([step_loss, *stats.values()], device)
                stats = dict(zip(stats, summed))
            for k, v in stats.items():
                curves.setdefault(k, []).append(v)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(step_loss)
            examples += len(batch)
            if on_progress is not None and on_progress(step + 1, losses[-1]):
                break  # the caller stops here (BC's early stopping)
    finally:
        policy.token_cache = None  # also when a step fails: the policy may be used after, for sampling
        if checkpointing:
            model.activation_checkpointing_disable()
    if fsdp:
        model = distributed.unshard(model)  # on rank 0, which validates and publishes; None on the others
        policy.model = model
        if model is None:
            return {"steps": len(losses)}
    model.eval()
    seconds = time.perf_counter() - started
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": len(losses),  # the steps taken: all of them unless the caller stopped early
        "examples": examples,
        # None, not NaN, with no steps (bc.steps: 0 on a pretrained model): metrics.json stays valid JSON.
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(tail) / len(tail) if tail else None,
        # kl_last, pref_accuracy_last, ...: each stat's mean over the last tenth of its steps
        **{f"{k}_last": sum(v[-len(tail) :]) / len(v[-len(tail) :]) for k, v in curves.items()},
        "losses": losses,  # the loss curve, one per optimiser step (in the artifact's manifest)
        "seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 1) if seconds > 0 else 0.0,
    }
