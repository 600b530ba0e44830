"""The reward models' losses as objectives of the one training loop (rest/training/loop.py), on batches of whole
sources: micro-batches, autocast precision, gradient checkpointing and the loop's schedule come with the loop.

    objective = RM_OBJECTIVES[cfg.objective](cfg)
    stats = train(rm, batches, cfg.train, None, seed=cfg.seed, objective=objective)

Each objective owns what is particular to it: `check(df, cfg)` refuses training data it cannot learn, `prepare(df)`
turns the comparisons into its rows (seq2seq: correction pairs), `learns(scores)` says whether a source teaches it
anything, `head` is the model it trains ("classifier": one output; "seq2seq": a corrector that writes text, and so
scores tokens), `output` maps the head's output to a reward in [0, 1], and `metrics(reward, target, df)` adds its own
held-out numbers. A new objective is a class here and its entry in RM_OBJECTIVES (and in the config's Literal).

A batch holds whole sources (every distinct completion of each: Bradley-Terry forms all of a source's pairs inside
it). Given the whole step's `totals`, an objective normalises a piece of the step (a micro-batch of whole sources)
by them, so the pieces' gradients add up to the step's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rest.errors import RestError
from rest.rewards.seq2seq_rm import best_targets


@dataclass(frozen=True)
class SourceBatch:
    """One optimiser step of a reward model: rows (source, completion, score, target) grouped by source, each
    source's rows consecutive; `sizes` is the rows of each source. `targets`: the corrections (seq2seq only)."""

    sources: list[str]
    completions: list[str]
    scores: list[float]
    sizes: list[int]
    targets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def _sources(self, a: int, b: int) -> SourceBatch:
        start, end = self.offsets()[[a, b]]
        return SourceBatch(
            self.sources[start:end],
            self.completions[start:end],
            self.scores[start:end],
            self.sizes[a:b],
            None if self.targets is None else self.targets[start:end],
        )

    def split(self, size: int) -> list[SourceBatch]:
        """Consecutive pieces of whole sources of at most `size` rows each (a source larger than that alone)."""
        pieces, a, rows = [], 0, 0
        for j, n in enumerate(self.sizes):
            if j > a and rows + n > size:
                pieces.append(self._sources(a, j))
                a, rows = j, 0
            rows += n
        pieces.append(self._sources(a, len(self.sizes)))
        return pieces

    def share(self, rank: int, world: int) -> SourceBatch:
        n = len(self.sizes)
        return self._sources(n * rank // world, n * (rank + 1) // world)


def pairs_of(scores: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) of one source's completions with scores[i] > scores[j] + min_gap: (better, worse)."""
    i, j = np.nonzero(scores[:, None] > scores[None, :] + min_gap)
    return i, j


def bradley_terry_loss(rewards: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over sources of the mean over its pairs of -log sigmoid(r_better - r_worse).

    `groups`: per source, index tensors (better, worse) into `rewards`. One pair with rewards 2 and 0 gives
    -log sigmoid(2) = 0.1269; with 0 and 2 (ranked the wrong way) -log sigmoid(-2) = 2.1269.
    """
    per_source = _per_source_losses(rewards, groups)
    if not per_source:
        return rewards.sum() * 0.0
    return torch.stack(per_source).mean()


def _per_source_losses(rewards: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [
        -torch.nn.functional.logsigmoid(rewards[better] - rewards[worse]).mean()
        for better, worse in groups
        if len(better)
    ]


class Regression:
    """Mean squared error of the model's output to the score (the reward is the output clipped to [0, 1])."""

    needs_reference = False
    head = "classifier"
    output = "clip01"

    def __init__(self, cfg: Any = None):
        pass

    @staticmethod
    def check(df: Any, cfg: Any) -> None:
        lo, hi = float(df["score"].min()), float(df["score"].max())
        if lo < 0 or hi > 1:
            raise RestError(
                f"data.score_column `{cfg.data.score_column}` ranges over [{lo:g}, {hi:g}]; regression learns a "
                "reward in "
                "[0, 1]: normalise the column, or use objective: bradley_terry (it needs only the order)"
            )

    @staticmethod
    def prepare(df: Any) -> Any:
        return df

    def learns(self, scores: np.ndarray) -> bool:
        return True

    @staticmethod
    def metrics(reward: np.ndarray, target: np.ndarray, df: Any) -> dict[str, Any]:
        return {}

    def pointwise(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (raw - target) ** 2

    def totals(self, rm: Any, batch: SourceBatch, model_cfg: Any) -> dict[str, float]:
        return {"rows": float(len(batch))}

    def __call__(self, rm, batch: SourceBatch, model_cfg=None, reference=None, totals=None):
        raw = rm.raw(batch.sources, batch.completions)
        target = torch.tensor(batch.scores, dtype=torch.float32, device=raw.device)
        rows = totals["rows"] if totals else len(batch)
        return self.pointwise(raw, target).sum() / rows, {}


class Classification(Regression):
    """Binary cross-entropy on a 0/1 score (the reward is sigmoid(output) = P(1): a rule model's P(violation))."""

    output = "sigmoid"

    @staticmethod
    def check(df: Any, cfg: Any) -> None:
        labels = set(np.unique(df["score"].to_numpy()).tolist())
        if not labels <= {0.0, 1.0}:
            raise RestError(
                f"data.score_column `{cfg.data.score_column}` holds {sorted(labels)[:5]}...; classification learns a "
                "0/1 label (1 = the rule is broken): map the column to 0 and 1, or use objective: regression"
            )

    @staticmethod
    def metrics(reward: np.ndarray, target: np.ndarray, df: Any) -> dict[str, Any]:
        return {
            "accuracy": round(float(np.mean((reward >= 0.5) == (target >= 0.5))), 4),
            "positive_fraction": round(float(np.mean(target >= 0.5)), 4),
        }

    def pointwise(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(raw, target, reduction="none")


class BradleyTerry(Regression):
    """InstructGPT's pairwise loss on each source's completions ranked by the score: bradley_terry_loss."""

    output = "sigmoid"

    def __init__(self, cfg: Any):
        self.min_gap = cfg.data.min_gap

    @staticmethod
    def check(df: Any, cfg: Any) -> None:
        pass  # it needs only the order of the scores

    def learns(self, scores: np.ndarray) -> bool:
        """A source teaches a ranking only with two completions whose scores differ by more than data.min_gap."""
        return bool(len(pairs_of(scores, self.min_gap)[0]))

    def _groups(self, batch: SourceBatch, device: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        scores, offsets, out = np.asarray(batch.scores), batch.offsets(), []
        for k in range(len(batch.sizes)):
            better, worse = pairs_of(scores[offsets[k] : offsets[k + 1]], self.min_gap)
            out.append(
                (
                    torch.as_tensor(better + offsets[k], device=device),
                    torch.as_tensor(worse + offsets[k], device=device),
                )
            )
        return out

    def totals(self, rm: Any, batch: SourceBatch, model_cfg: Any) -> dict[str, float]:
        scores, offsets = np.asarray(batch.scores), batch.offsets()
        ranked = sum(
            1 for k in range(len(batch.sizes)) if len(pairs_of(scores[offsets[k] : offsets[k + 1]], self.min_gap)[0])
        )
        return {"sources": float(ranked)}

    def __call__(self, rm, batch: SourceBatch, model_cfg=None, reference=None, totals=None):
        raw = rm.raw(batch.sources, batch.completions)
        groups = self._groups(batch, raw.device)
        if totals is None:
            return bradley_terry_loss(raw, groups), {}
        per_source = _per_source_losses(raw, groups)
        if not per_source:
            return raw.sum() * 0.0, {}
        return torch.stack(per_source).sum() / totals["sources"], {}


class Seq2Seq(Regression):
    """Sequence MLE of the corrector: token-mean NLL of writing the source's best completion given (source,
    completion) (rest/rewards/seq2seq_rm.py)."""

    head = "seq2seq"

    @staticmethod
    def check(df: Any, cfg: Any) -> None:
        pass  # it learns the best completion of each source, whatever the scale of the scores

    @staticmethod
    def prepare(df: Any) -> Any:
        return best_targets(df)  # correction pairs (-> the source's best) and identity pairs (best -> best)

    @staticmethod
    def metrics(reward: np.ndarray, target: np.ndarray, df: Any) -> dict[str, Any]:
        # how often it keeps a source's best completion as it is (reward 1), and flags a worse one (reward < 1)
        best = target == df.groupby("source_id", sort=False)["score"].transform("max").to_numpy()
        return {
            "keeps_best": round(float(np.mean(reward[best] == 1.0)), 4),
            "flags_worse": round(float(np.mean(reward[~best] < 1.0)), 4) if (~best).any() else None,
        }

    def totals(self, rm: Any, batch: SourceBatch, model_cfg: Any) -> dict[str, float]:
        return {"tokens": float(sum(len(ids) for ids in rm.target_ids(batch.targets)))}

    def __call__(self, rm, batch: SourceBatch, model_cfg=None, reference=None, totals=None):
        if totals is None:
            return rm.nll(batch.sources, batch.completions, batch.targets), {}
        return rm.nll(batch.sources, batch.completions, batch.targets, reduction="sum") / totals["tokens"], {}


# `objective:` of a reward-model config -> its objective (its loss, head and output: see the module docstring)
RM_OBJECTIVES: dict[str, type[Regression]] = {
    "regression": Regression,
    "bradley_terry": BradleyTerry,
    "classification": Classification,
    "seq2seq": Seq2Seq,
}
