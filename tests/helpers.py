"""What several test files share: tiny models and checkpoints, a few labelled pairs. Test files import from here,
never from each other."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerFast,
)

from rest.config import ModelConfig
from rest.models.policy import (
    build_policy,
)

TINY_TEXTS = ["6947", "sechstausendneunhundertsiebenundvierzig", "12", "zwölf", "5", "fünf"]


def tiny_policy(tmp_path, model_type):
    arch = {
        "bart": {
            "model_type": "bart",
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
        },
        "llama": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
    }[model_type]
    path = tmp_path / f"{model_type}.json"
    path.write_text(json.dumps(arch))
    cfg = ModelConfig(architecture=str(path), vocab_size=48)
    return build_policy(cfg, TINY_TEXTS, seed=0), cfg


SOURCES = ["12", "5", "6947", "300", "18", "7", "1001", "44"]


TARGETS = [
    "zwölf",
    "fünf",
    "sechstausendneunhundertsiebenundvierzig",
    "dreihundert",
    "achtzehn",
    "sieben",
    "eintausendeins",
    "vierundvierzig",
]


_TRAIN = pd.read_parquet("data/numbers/train.parquet")  # relative: the tests run in the repository root
TRAIN_TEXTS = _TRAIN["source"].tolist() + _TRAIN["reference"].tolist()


SIZES = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64}


def _unigram_t5() -> PreTrainedTokenizerFast:
    """T5's shape: a Unigram model over Metaspace pieces, <pad> = 0, </s> = 1, <unk> = 2, EOS appended, no BOS."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        TRAIN_TEXTS,
        trainers.UnigramTrainer(
            vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _byte_level(specials: list[str], **named: str) -> PreTrainedTokenizerFast:
    """GPT-2's and Qwen2's shape: byte-level BPE, no post-processing (nothing added around a text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TRAIN_TEXTS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _llama() -> PreTrainedTokenizerFast:
    """Llama's shape: BPE over Metaspace pieces with byte fallback, <unk> = 0, <s> = 1, </s> = 2, BOS prepended."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.train_from_iterator(
        TRAIN_TEXTS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _llama_config(tok: PreTrainedTokenizerFast, sizes: dict[str, int], **extra):
    """A Llama config of `sizes` for `tok` (<s> = 1, </s> = 2), as both checkpoint builders make it."""
    return AutoConfig.for_model(
        "llama",
        hidden_size=sizes["hidden"],
        intermediate_size=sizes["ffn"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["heads"],
        max_position_embeddings=128,
        vocab_size=len(tok),
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )


def build_checkpoint(
    kind: str,
    path: Path,
    sizes: dict[str, int] = SIZES,
    chat_template: str | None = None,
    vocab: int | None = None,
    positions: int = 128,
) -> Path:
    """A tiny random `kind` model and its tokenizer (with `chat_template`), saved as a user's checkpoint would be.
    qwen2 only: `vocab` widens its embeddings and logits beyond the tokenizer's (Qwen2.5's is 151,936: a real
    vocabulary's memory at a tiny size), `positions` its context."""
    h, n, heads, ffn = sizes["hidden"], sizes["layers"], sizes["heads"], sizes["ffn"]
    if kind == "t5":
        tok = _unigram_t5()
        config = AutoConfig.for_model(
            "t5",
            d_model=h,
            d_kv=h // heads,
            d_ff=ffn,
            num_layers=n,
            num_heads=heads,
            vocab_size=len(tok),
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    elif kind == "gpt2":
        tok = _byte_level(
            ["<|endoftext|>"], bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        config = AutoConfig.for_model(
            "gpt2",
            n_embd=h,
            n_layer=n,
            n_head=heads,
            n_inner=ffn,
            n_positions=128,
            vocab_size=len(tok),
            bos_token_id=0,
            eos_token_id=0,
        )
    elif kind == "qwen2":
        tok = _byte_level(["<|endoftext|>", "<|im_end|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = AutoConfig.for_model(
            "qwen2",
            hidden_size=h,
            intermediate_size=ffn,
            num_hidden_layers=n,
            num_attention_heads=heads,
            num_key_value_heads=1,
            max_position_embeddings=positions,
            vocab_size=max(len(tok), vocab or 0),
            bos_token_id=None,
            eos_token_id=1,
            pad_token_id=0,
        )
    elif kind == "llama":
        tok = _llama()
        config = _llama_config(tok, sizes)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    if chat_template:
        tok.chat_template = chat_template
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ChatML, as Qwen2 instruct checkpoints have it (<|im_end|> is the qwen2 builder's EOS)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# for the llama builder's tokenizer, whose alphabet is the numbers data's: turns in <s> ... </s> (its EOS)
LLAMA_CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant {% endif %}"
)

CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"


def build_reward_checkpoint(kind: str, path: Path, chat_template: str | None = None) -> Path:
    """A tiny random sequence classifier with one output (an RLHF reward model's shape) and its tokenizer: `bert`
    (WordPiece, [CLS] a [SEP] b [SEP]) or `llama` (the last token's score; optionally a chat template)."""
    from transformers import AutoModelForSequenceClassification

    h, heads = SIZES["hidden"], SIZES["heads"]
    if kind == "bert":
        wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        wp.normalizer = normalizers.BertNormalizer(lowercase=True)
        wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wp.decoder = decoders.WordPiece()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        wp.train_from_iterator(TRAIN_TEXTS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
        wp.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
        config = AutoConfig.for_model(
            "bert",
            hidden_size=h,
            num_hidden_layers=1,
            num_attention_heads=heads,
            intermediate_size=SIZES["ffn"],
            max_position_embeddings=128,
            vocab_size=len(tok),
            num_labels=1,
            pad_token_id=0,
        )
    elif kind == "llama":
        tok = _llama()
        # no pad token: the loader pads with EOS, as users' Llama reward models need
        config = _llama_config(tok, {**SIZES, "layers": 1}, num_labels=1)
    else:
        raise ValueError(kind)
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Server:
    """A scoring server on 127.0.0.1 in this process, for reward.servers: `answer(request) -> (status, body)`, every
    request counted; `port` to restart one where another was."""

    def __init__(self, answer, port: int = 0):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                status, body = answer(req)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_conversations(parquet: str, path: Path, rows: int | None = None, system: str | None = None) -> Path:
    """A split of ours as a chat dataset of another shape: JSONL rows {uid, conversation: [{role, content}, ...],
    difficulty}, the reference as the last assistant turn."""
    df = pd.read_parquet(parquet)
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(df.head(rows).itertuples()):
            turns = [{"role": "system", "content": system}] if system else []
            turns += [{"role": "user", "content": r.source}, {"role": "assistant", "content": r.reference}]
            f.write(json.dumps({"uid": f"{path.stem}-{i}", "conversation": turns, "difficulty": len(r.source)}) + "\n")
    return path
