"""Token ids: the tokenizer trained from scratch for an embedded model, and padding a batch of id lists.

tok = train_tokenizer(texts, vocab_size=128)
ids, mask = pad([[5, 6, 7], [5]], pad_id=0)            # right padding (left=True for decoder-only prompts)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, in this order


def pad(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids [B, T], attention mask [B, T]), padded with `pad_id` on the right (or the left)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if left:
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        else:
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
    return ids, mask


def train_tokenizer(
    texts: list[str], vocab_size: int, special: list[str] | None = None, characters: str = ""
) -> PreTrainedTokenizerFast:
    """A byte-free BPE tokenizer: digits one token each, words split by Metaspace, `</s>` appended.

    Digits are kept apart because each digit carries its own meaning in a number; merging "69" into one token
    would hide the structure the model has to learn from 200 examples. Tokens are capped at 8 characters:
    uncapped, BPE on a few hundred long compound words learns cross-morpheme tokens ("undvierzigtausend")
    that the model cannot recombine; capped, it learns the morphemes ("vierund", "zig", "tausend").
    No "▁" is prepended to the first word, so a word has one token form wherever it stands. `special`: more
    special tokens (a chat template's), ids 4 on, each one token wherever it stands; `characters`: more of the
    alphabet (the template's own text: role names, newlines).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    alphabet = sorted(set("".join(texts)) | set("0123456789") | set(characters))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(special or []),
        initial_alphabet=alphabet,
        show_progress=False,
        max_token_length=8,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if special:
        out.add_special_tokens({"additional_special_tokens": list(special)})
    return out


def made_by_train_tokenizer(tokenizer) -> bool:
    """A tokenizer from train_tokenizer: SPECIAL_TOKENS at ids 0..3 and no separator (it knows single sequences)."""
    return (
        tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
        and tokenizer.sep_token is None
    )
