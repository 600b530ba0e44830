"""Tiny real models (built from config, no download): batching, masking and the sampling loop."""

import pytest
import torch

from rest.models.policy import (
    encode_pairs,
    load_policy,
    prompt_ids,
    target_ids,
)
from rest.models.sampling import generate
from tests.helpers import tiny_policy


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_labels_cover_target_tokens_only(tmp_path, model_type):
    policy, cfg = tiny_policy(tmp_path, model_type)
    batch = encode_pairs(policy, ["12", "6947"], ["zwölf", "sechstausend"], cfg)
    tgt = target_ids(policy, ["zwölf", "sechstausend"], cfg)
    labelled = (batch["labels"] != -100).sum(dim=1).tolist()
    assert labelled == [len(t) for t in tgt]  # every target token incl. EOS, nothing of the source or padding
    for row, t in enumerate(tgt):
        assert batch["labels"][row][batch["labels"][row] != -100].tolist() == t
        assert t[-1] == policy.tokenizer.eos_token_id
    if model_type == "llama":
        # causal: the label at position p is the input at p + 1
        ids, labels = batch["input_ids"][1], batch["labels"][1]
        pos = (labels != -100).nonzero().flatten()
        assert ids[pos + 1][:-1].tolist() == labels[pos][:-1].tolist()


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_sampling_is_reproducible_from_its_seed(tmp_path, model_type):
    policy, cfg = tiny_policy(tmp_path, model_type)
    kw = dict(num_samples=4, max_new_tokens=8, batch_size=3, temperature=1.5)
    a = generate(policy, ["12", "6947", "5"], cfg, seed=7, **kw)
    b = generate(policy, ["12", "6947", "5"], cfg, seed=7, **kw)
    c = generate(policy, ["12", "6947", "5"], cfg, seed=8, **kw)
    assert a == b
    assert a.completions != c.completions
    assert len(a.completions) == 12 and all(n <= 8 for n in a.num_tokens)


def _teacher_forced_logprob(policy, prompt, ids):
    """log pi(ids + EOS | prompt) by one forward pass over the whole sequence."""
    eos, start = policy.tokenizer.eos_token_id, getattr(policy.model.config, "decoder_start_token_id", None)
    target = ids + [eos]
    with torch.no_grad():
        if policy.is_encoder_decoder:
            logits = policy.model(
                input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[start] + ids])
            ).logits[0]
        else:
            logits = policy.model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 :]
    return torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)].sum().item()


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_logprob_is_the_policy_sequence_logprob(tmp_path, model_type):
    """The recorded logprob equals the teacher-forced log-likelihood of the sampled tokens and their EOS, for every
    row: sources of different lengths (padding), a batch that splits one source's samples (7 rows, 5 samples per
    source: the prompt is read once per batch and its cache copied), and rows that stop at different steps (a
    finished row leaves the batch, the others go on)."""
    policy, cfg = tiny_policy(tmp_path, model_type)
    sources = ["12", "6947", "5"]
    out = generate(policy, sources, cfg, num_samples=5, batch_size=7, max_new_tokens=20, seed=3, temperature=2.0)
    prompts = prompt_ids(policy, sources, cfg)
    checked, lengths = 0, set()
    for row, (ids, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        if len(ids) == 20:  # stopped by the length limit, not by EOS
            continue
        assert lp == pytest.approx(_teacher_forced_logprob(policy, prompts[row // 5], ids), abs=1e-4)
        checked += 1
        lengths.add(len(ids))
    assert checked >= 5 and len(lengths) >= 3


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_greedy_is_what_transformers_generate_returns(tmp_path, model_type):
    """Our decoding loop and transformers' `generate` agree token for token (greedy), on a padded batch."""
    from rest.models.tokenizer import pad

    policy, cfg = tiny_policy(tmp_path, model_type)
    sources = ["12", "6947", "5", "sechstausend"]
    ours = generate(policy, sources, cfg, greedy=True, max_new_tokens=12)
    tok = policy.tokenizer
    ids, mask = pad(prompt_ids(policy, sources, cfg), tok.pad_token_id, left=not policy.is_encoder_decoder)
    with torch.no_grad():
        theirs = policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    theirs = theirs[:, 1:] if policy.is_encoder_decoder else theirs[:, ids.shape[1] :]  # drop the start / the prompt
    for row, want in enumerate(theirs.tolist()):
        want = want[: want.index(tok.eos_token_id)] if tok.eos_token_id in want else want
        assert ours.token_ids[row] == want
    # and the loop without its speed-ups (every row to the end, the prompt read per row) decodes the same
    plain = generate(policy, sources, cfg, greedy=True, max_new_tokens=12, speedups=())
    assert plain.token_ids == ours.token_ids
    assert plain.logprobs == pytest.approx(ours.logprobs, abs=1e-5)


def test_top_k_1_is_greedy(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    greedy = generate(policy, ["12", "6947"], cfg, greedy=True, max_new_tokens=8)
    top1 = generate(policy, ["12", "6947"], cfg, top_k=1, max_new_tokens=8, seed=123)
    assert greedy.completions == top1.completions


def test_saved_policy_loads_back_with_auto_classes(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    policy.save(tmp_path / "p")
    again = load_policy(tmp_path / "p")
    assert again.is_encoder_decoder
    assert prompt_ids(again, ["6947"], cfg) == prompt_ids(policy, ["6947"], cfg)
    a = generate(policy, ["6947"], cfg, greedy=True, max_new_tokens=6)
    b = generate(again, ["6947"], cfg, greedy=True, max_new_tokens=6)
    assert a == b


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_trained_targets_are_what_greedy_decoding_returns(tmp_path, model_type):
    """Training and decoding agree on the layout: a model that memorised two pairs returns them verbatim.

    An off-by-one between labels and inputs, or a prompt/padding mismatch between training and generation,
    would still lower the loss but make the decoded text differ.
    """
    from rest.config import PolicyOptimFields
    from rest.training.batches import Batch
    from rest.training.loop import train

    policy, cfg = tiny_policy(tmp_path, model_type)
    sources, targets = ["12", "6947"], ["zwölf", "sechstausendneunhundertsiebenundvierzig"]
    optim = PolicyOptimFields(steps=400, batch_size=2, lr=3e-3, warmup_steps=5, weight_decay=0.0)
    stats = train(policy, [Batch(sources, targets)] * optim.steps, optim, cfg, seed=0)
    assert stats["loss_last"] < 0.05
    out = generate(policy, sources, cfg, greedy=True, max_new_tokens=48)  # the tiny vocabulary is near char-level
    assert out.completions == targets
    # the two rows end at different steps: the short one leaves the batch early, the long one must not notice
    assert len(set(out.num_tokens)) == 2
    plain = generate(policy, sources, cfg, greedy=True, max_new_tokens=48, speedups=())
    assert plain.token_ids == out.token_ids and plain.logprobs == pytest.approx(out.logprobs, abs=1e-5)
    samples = generate(policy, sources, cfg, num_samples=3, batch_size=4, top_k=1, max_new_tokens=48, seed=0)
    assert samples.completions == [t for t in targets for _ in range(3)]
    # ids promise the same floats with 1 thread (a Dask worker) as with 2: batches shrink as rows finish, and
    # must not shrink to the few-row matmuls whose sums depend on the thread count
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(generate(policy, sources * 20, cfg, num_samples=4, temperature=1.5, max_new_tokens=48, seed=5))
    finally:
        torch.set_num_threads(threads)
    assert len(set(runs[0].num_tokens)) > 5  # rows did finish at many different steps
    assert runs[0] == runs[1]


def test_a_policy_trained_and_kept_in_memory_is_the_one_on_disk(tmp_path):
    """rest.models.resident: the next stage of a process gets the policy it just published without loading it, and
    that policy is what loading would give (same logits bit for bit, eval mode, every weight trainable)."""
    import json

    from rest import caches
    from rest.config import PolicyOptimFields
    from rest.models import resident
    from rest.models.policy import encode_pairs, forward_logits
    from rest.training.batches import Batch
    from rest.training.loop import train

    caches.clear()  # a cold start: nothing held
    built, cfg = tiny_policy(tmp_path, "bart")
    built.save(tmp_path / "base")
    policy = load_policy(tmp_path / "base")  # as the pipeline keeps them: loaded from an artifact, then trained
    optim = PolicyOptimFields(steps=5, batch_size=2, lr=3e-3, warmup_steps=1, lora={"r": 4})
    train(policy, [Batch(["12", "6947"], ["zwölf", "sechs"])] * 5, optim, cfg, seed=0)  # LoRA merged: frozen
    dirs = [tmp_path / f"p{k}" for k in range(3)]
    for k, d in enumerate(dirs):
        policy.save(d)
        (d / "_manifest.json").write_text(json.dumps({"id": f"id-{k}"}))
    resident.keep(dirs[0], policy, "id-0")
    assert resident.get(dirs[0]) is policy and not policy.model.training
    assert all(p.requires_grad for p in policy.model.parameters())
    loaded = load_policy(dirs[0])
    batch = encode_pairs(policy, ["12", "6947", "3"], ["zwölf", "sechs", "drei"], cfg)
    with torch.no_grad():
        assert torch.equal(forward_logits(policy, batch), forward_logits(loaded, batch))
    # and it saves the bytes the loaded one saves (an Improve step publishes what it trained: same id either way)
    policy.save(tmp_path / "again-kept")
    loaded.save(tmp_path / "again-loaded")
    files = sorted(f.name for f in (tmp_path / "again-loaded").iterdir())
    assert files == sorted(f.name for f in (tmp_path / "again-kept").iterdir())
    for name in files:
        assert (tmp_path / "again-kept" / name).read_bytes() == (tmp_path / "again-loaded" / name).read_bytes(), name
    assert resident.take(dirs[0]) is policy  # to train in place: no longer held
    assert resident.get(dirs[0]) is not policy  # loaded again (and held)
    # another id at the same path (a rerun published anew) is another policy
    (dirs[0] / "_manifest.json").write_text(json.dumps({"id": "id-new"}))
    assert resident.get(dirs[0]) is not resident.get(dirs[1]) and resident.take(dirs[0]) is not policy
    # at most HELD policies: the oldest goes first
    resident.release()
    kept = [load_policy(d) for d in dirs]
    for d, k, held in zip(dirs, ("id-new", "id-1", "id-2"), kept):
        resident.keep(d, held, k)
    assert resident.get(dirs[2]) is kept[2] and resident.get(dirs[1]) is kept[1]
    # one copy of an artifact per device: its bfloat16 copy (Grow's) replaces the float32 one (Improve's), and back
    half = resident.get(dirs[2], dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and resident.get(dirs[1]) is kept[1]
    assert resident.get(dirs[2]) is not kept[2] and resident.get(dirs[2], dtype="bfloat16") is not half
    assert resident.get(dirs[0]) is not kept[0]
    resident.release()
