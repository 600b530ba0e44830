import numpy as np
import pandas as pd

from rest.filtering import epoch_batches, mix_batches, normalise_text, select


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
    rows = pd.DataFrame({"source_id": ["a", "a"], "sample_index": [0, 1], "completion": ["x ", "x"], "reward": [0.6, 0.9]})
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
