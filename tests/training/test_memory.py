"""Memory bounded by tokens, not rows: a Qwen2-shaped policy with Qwen2.5's 151,936-token vocabulary, a 32-wide
hidden layer and 400-token rows (a ~200-token source, a ~200-token target), in a process of its own: a Grow shard's
sampling, a seq2seq reward model's scoring (the same checkpoint as a decoder-only corrector), validation's NLL and
an Improve step, each held to a bound on the process's peak resident memory (ru_maxrss) above what it had after
loading the policy. Every pass of logits must fit the run's `logits_mb` budget, and a loss's logits cover the
targets only (the lm_head skips the prompt).

The bound, worked out: a row's ~200 target positions of float32 logits are 200 x 151,936 x 4 = 122 MB, and a loss
holds three such tensors (logits, log-softmax, gradient): 365 MB, the least any pass of a row can take. With
`logits_mb: 256` every pass holds one row, so a stage's growth stays under 365 MB plus 400 MB for everything else
(the model, its activations, the allocator's slack): 765 MB. The code before the budget put a whole batch in one
pass: validation's 6 rows of 400 positions are 1.46 GB of logits before their log-softmax, an Improve step's the
same before its gradient, and the prefill of 6 prompts of 400 tokens 1.46 GB for logits of which one position is
sampled; with the budget but logits at every position, an Improve step's row took 729 MB (785 MB measured).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import build_checkpoint

pytestmark = pytest.mark.integration

VOCAB = 151_936
ROWS = 6
BUDGET_MB = 256
BOUND_MB = 365 + 400

STAGES = r"""
import json, resource, sys
from rest.config import ModelConfig, PolicyOptimFields
from rest.training.objectives import target_nll
from rest.models.policy import load_policy, pair_positions, prompt_ids
from rest.models.sampling import generate
from rest.rewards.seq2seq_rm import Seq2SeqRewardModel
from rest.training.batches import Batch
from rest.training.loop import train

path, rows, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3]
budget = None if budget == "none" else int(budget)
cfg = ModelConfig(pretrained=path, max_source_tokens=400, max_target_tokens=400, chat_template="none")
policy = load_policy(path)
words = "eins zwei drei vier fuenf sechs sieben acht neun zehn elf zwoelf".split()
text = lambda k, n: " ".join(words[(k + j) % len(words)] + str(j % 10) for j in range(n))
sources = [text(k, 56) for k in range(rows)]
targets = [text(k + 3, 56) for k in range(rows)]
prompts = [s + " " + t for s, t in zip(sources, targets)]  # Grow's prompts as long as a training row
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base, out = peak(), {}
# smallest expected peak first: the process's peak only rises, so each stage's growth is measured from the base
generate(policy, prompts, cfg, num_samples=2, max_new_tokens=4, batch_size=2 * rows, seed=0, logits_mb=budget)
out["grow"] = {"grew_mb": peak() - base, "positions": [len(p) for p in prompt_ids(policy, prompts, cfg)]}
rm = Seq2SeqRewardModel(policy.model, policy.tokenizer, max_tokens=400)  # a decoder-only seq2seq reward model
rm.score(sources, targets, logits_mb=budget)
out["reward"] = {"grew_mb": peak() - base, "positions": [len(p) for p in rm._prompt_ids(sources, targets)]}
target_nll(policy, sources, targets, cfg, logits_mb=budget)
out["valid"] = {"grew_mb": peak() - base, "positions": pair_positions(policy, sources, targets, cfg)}
optim = PolicyOptimFields(steps=1, batch_size=rows, lr=1e-3, warmup_steps=0)
train(policy, [Batch(sources, targets)], optim, cfg, seed=0, logits_mb=budget)
out["improve"] = {"grew_mb": peak() - base, "positions": pair_positions(policy, sources, targets, cfg)}
print(json.dumps(out))
"""


def stages(checkpoint: Path, budget: int | None, rows: int = ROWS) -> dict:
    """Each stage's peak resident memory above the process's after loading (MB), and its rows' positions."""
    proc = subprocess.run(
        [sys.executable, "-c", STAGES, str(checkpoint), str(rows), "none" if budget is None else str(budget)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    sizes = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64}
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("vocab152k"), sizes, vocab=VOCAB, positions=1024)


def test_a_152k_vocabulary_at_400_tokens_a_row_stays_within_the_logits_budget(checkpoint):
    out = stages(checkpoint, BUDGET_MB)
    for stage, measured in out.items():
        positions = measured["positions"]
        assert min(positions) >= 380, (stage, positions)  # real lengths: the rows are what the bound assumes
        assert max(positions) * VOCAB * 4 * 3 <= 729 * 2**20 * 1.1  # a row's pass at every position: ~729 MB
        assert measured["grew_mb"] < BOUND_MB, f"{stage}: peak resident memory grew {measured['grew_mb']:.0f} MB"
