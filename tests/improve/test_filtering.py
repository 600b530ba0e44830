import numpy as np
import pandas as pd

from rest.data.batching import epoch_batches, length_window, mix_batches, sort_windows
from rest.improve.selection import normalise_text, select, sparse_selection


def _rows():
    return pd.DataFrame(
        {
            "source_id": ["a", "a", "a", "a", "b", "b"],
            "sample_index": [0, 1, 2, 3, 0, 1],
            "completion": ["eins", " eins ", "ein s", "zwei", "drei", "drei"],
            "reward": [1.0, 1.0, 0.8, 0.2, 0.95, 0.95],
        }
    )


def test_normalise_text():
    assert normalise_text("  zwei\u00a0 tausend ") == "zwei tausend"
    assert normalise_text("Eins") != normalise_text("eins")  # case is kept


def test_select_threshold_and_dedup_per_source():
    kept = select(_rows(), tau=0.9)
    # a: "eins" and " eins " are one text (keep sample 0); "ein s" (0.8) and "zwei" (0.2) are below tau.
    # b: two identical "drei" -> one, the lowest sample_index.
    assert sorted(zip(kept.source_id, kept.sample_index)) == [("a", 0), ("b", 0)]


def test_select_keeps_distinct_texts_of_one_source():
    kept = select(_rows(), tau=0.5)
    assert sorted(kept[kept.source_id == "a"].completion.map(normalise_text)) == ["ein s", "eins"]


def test_select_prefers_the_higher_reward_duplicate():
    rows = pd.DataFrame(
        {"source_id": ["a", "a"], "sample_index": [0, 1], "completion": ["x ", "x"], "reward": [0.6, 0.9]}
    )
    assert select(rows, 0.5).sample_index.tolist() == [1]


def test_epoch_batches_cover_every_item_once_per_epoch():
    batches = epoch_batches(10, 4, 5, np.random.default_rng(0))  # 20 draws = 2 epochs of 10
    flat = np.concatenate(batches)
    assert [len(b) for b in batches] == [4] * 5
    assert sorted(flat.tolist()) == sorted(list(range(10)) * 2)


def test_mix_batches_ratio():
    plan = mix_batches(n_kept=100, n_train=20, train_mix=0.25, batch_size=32, steps=10, rng=np.random.default_rng(0))
    assert len(plan) == 10
    assert all(len(k) == 24 and len(t) == 8 for k, t in plan)
    assert max(max(k) for k, _ in plan) < 100 and max(max(t) for _, t in plan) < 20


def test_mix_batches_with_nothing_kept_is_all_train():
    plan = mix_batches(n_kept=0, n_train=20, train_mix=0.25, batch_size=8, steps=3, rng=np.random.default_rng(0))
    assert all(len(k) == 0 and len(t) == 8 for k, t in plan)


def _spread(batches, lengths):
    """Mean over batches of (longest - shortest) length in the batch: what padding follows."""
    return float(np.mean([lengths[b].max() - lengths[b].min() for b in batches if len(b)]))


def test_sort_windows_deals_each_run_shortest_first():
    lengths = np.array([9, 1, 5, 2, 7, 3])
    out = sort_windows([np.array([0, 1]), np.array([2, 3]), np.array([4, 5])], lengths, window=2)
    # run 1 = {0, 1, 2, 3} sorted by length -> 1 (1), 3 (2), 2 (5), 0 (9); run 2 = {4, 5} -> 5 (3), 4 (7)
    assert [b.tolist() for b in out] == [[1, 3], [2, 0], [5, 4]]


def test_group_by_length_keeps_every_draw_within_its_run_and_cuts_the_spread():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000)
    drawn = epoch_batches(1000, 32, 60, np.random.default_rng(1))
    grouped = epoch_batches(1000, 32, 60, np.random.default_rng(1), lengths=lengths)
    window = length_window(1000, 32)
    assert window == 31  # one epoch of 1000 items in batches of 32
    for start in range(0, 60, window):  # the same draws, within the same run of steps
        assert sorted(np.concatenate(drawn[start : start + window])) == sorted(
            np.concatenate(grouped[start : start + window])
        )
    assert [len(b) for b in grouped] == [32] * 60
    assert _spread(grouped, lengths) < 0.2 * _spread(drawn, lengths)
    # Within a run the batches are shuffled, not shortest first.
    firsts = [lengths[b].mean() for b in grouped[:window]]
    assert firsts != sorted(firsts)


def test_length_window_never_spans_two_epochs():
    # 200 labelled rows in batches of 32 (BC): a window of 6 batches, so one row is not copied into one batch 8 times.
    assert length_window(200, 32) == 6
    grouped = epoch_batches(200, 32, 600, np.random.default_rng(0), lengths=np.arange(200) % 7)
    assert max(np.bincount(b).max() for b in grouped) <= 2


def test_mix_batches_grouped_keeps_the_mix_and_pairs_lengths():
    rng = np.random.default_rng(0)
    kept_len, train_len = rng.integers(1, 60, size=500), rng.integers(1, 60, size=200)
    plan = mix_batches(500, 200, 0.25, 32, 100, np.random.default_rng(2), lengths=(kept_len, train_len))
    assert all(len(k) == 24 and len(t) == 8 for k, t in plan)
    # A batch's kept rows and train rows are of similar length: their means move together.
    corr = np.corrcoef([kept_len[k].mean() for k, _ in plan], [train_len[t].mean() for _, t in plan])[0, 1]
    assert corr > 0.9
    assert (
        mix_batches(0, 20, 0.25, 8, 3, np.random.default_rng(0), lengths=(np.zeros(0), np.arange(20)))[0][1].size == 8
    )


def test_sparse_selection_says_what_to_change_when_tau_keeps_almost_nothing():
    assert sparse_selection(0.95, 0.0100, 32000, {"p50": 0.8, "p90": 1.0}) is None  # 1% kept: nothing to say
    # a learned reward model's scores (median 0.349, p90 0.61) under chrF's thresholds: 8 of 32000 kept
    message = sparse_selection(0.95, 0.00025, 32000, {"p50": 0.349, "p90": 0.61})
    assert message.startswith("tau=0.95 keeps 0.03% of the 32000 Grow samples (their rewards: median 0.349, p90 0.61)")
    assert "improve.thresholds" in message and "improve.selection: top_k" in message
    assert sparse_selection(1.0, 0.0, 100, {"p50": 0.2, "p90": 0.4}).startswith("tau=1.0 keeps none of the 100")
