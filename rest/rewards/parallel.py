"""A sentence metric (chrF, BLEU, TER, exact match) over many rows, in processes: sacrebleu is pure Python, one core
per process. The built-in metric components' builder."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rest.config import RewardConfig
from rest.errors import RestError
from rest.rewards.metrics import SENTENCE_METRICS
from rest.rewards.scorer import Scorer


def metric_scorer(name: str, rc: RewardConfig, device: str) -> Scorer:
    """Sentence metric `name` (chrf, bleu, ter, exact_match) against the reference: see in_parallel."""
    return Scorer(in_parallel(name))


# Below this many characters (completions + references) a metric runs in this process: a helper process costs
# ~0.35 s to start (Python, numpy, sacrebleu), more than it saves on less. 400k characters is about 13k rows of the
# embedded task, ~1.3 s of chrF on one core; the default run's shards (a few hundred distinct rows) never reach it.
PARALLEL_MIN_CHARS = 400_000

# The extra share of the rows this process scores itself while the helpers start (for 2 processes: 55%).
HEAD_START = 0.05

# A helper reads its whole input before it imports anything, so the parent's write never waits for the imports.
_WORKER = "import sys; data = sys.stdin.buffer.read(); from rest.rewards.metrics import serve_chunk; serve_chunk(data)"


def scoring_processes() -> int:
    """How many processes a large metric call uses: $REST_SCORE_PROCESSES, else the cores this process may run on
    (at most 8); 1 inside a daemonic process (a Dask worker), whose children would be orphaned with it."""
    if multiprocessing.current_process().daemon:
        return 1
    wanted = os.environ.get("REST_SCORE_PROCESSES")
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise RestError(
                f"REST_SCORE_PROCESSES={wanted!r}: give a whole number of processes (1 turns scoring in parallel off)"
            ) from None
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def in_parallel(name: str) -> Callable[..., np.ndarray]:
    """Sentence metric `name` (rest.rewards.metrics.SENTENCE_METRICS), scored over contiguous chunks by this process and
    `scoring_processes() - 1` helper processes (`python -c`, so nothing of the caller's main module is re-run,
    unlike multiprocessing's spawn) when the rows are large enough to pay for it. The same numbers either way."""
    metric = SENTENCE_METRICS[name]

    def scored(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
        processes = scoring_processes()
        chars = sum(map(len, completions)) + sum(len(r) for r in references if r is not None)
        if processes < 2 or chars < PARALLEL_MIN_CHARS:
            return metric(sources, completions, references)
        # This process starts on its chunk at once, a helper ~0.35 s later (its imports): this one takes a little more.
        first = min(1.0, 1.0 / processes + HEAD_START)
        cuts = np.concatenate([[0], np.linspace(first * len(completions), len(completions), processes)]).astype(int)
        chunks = [
            (list(sources[a:b]) if len(sources) else [], list(completions[a:b]), list(references[a:b]))
            for a, b in zip(cuts[:-1], cuts[1:])
        ]
        helpers: list[tuple[subprocess.Popen, Any]] = []
        try:
            for chunk in chunks[1:]:
                # stderr to a file: a helper that warns a lot must not block on a full pipe nobody reads yet
                err = tempfile.TemporaryFile()
                helper = subprocess.Popen(
                    [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
                )
                helpers.append((helper, err))
                assert helper.stdin is not None and helper.stdout is not None  # both are pipes
                helper.stdin.write(pickle.dumps((name, chunk)))
                helper.stdin.close()
            parts = [metric(*chunks[0])]
            for helper, err in helpers:
                assert helper.stdout is not None
                out = helper.stdout.read()
                if helper.wait() != 0:
                    err.seek(0)
                    tail = err.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"a scoring process ended with exit code {helper.returncode}: {tail}")
                status, value = pickle.loads(out)
                if status == "error":
                    raise value
                parts.append(value)
        finally:
            for helper, err in helpers:  # on any error (or Ctrl-C) here: no helper outlives the call
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
                if helper.stdout is not None:
                    helper.stdout.close()
                err.close()
        return np.concatenate(parts)

    return scored
