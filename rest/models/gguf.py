"""A GGUF file (llama.cpp's format) as an ordinary transformers checkpoint: what `rest model import` writes.

    rest model import SmolLM2-135M-Instruct.Q4_1.gguf build/smollm2-135m-instruct

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package), de-quantizing its
weights to float32, but will not save a model loaded so ("quantized with gguf and is not serializable"). The import
builds the same architecture from the loaded config, takes the loaded weights, and saves model and tokenizer (with
its chat template) as a `save_pretrained` directory, which `model.pretrained` then names like any other. The same
file gives the same bytes every time (tested); `import.json` records the file's sha256, its architecture and the
parameter count. An architecture transformers cannot de-quantize is refused in one line before anything is written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

from rest.artifacts.manifests import sha256_file
from rest.errors import RestError
from rest.models.checkpoints import quiet

IMPORT_FILE = "import.json"


def gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file, or a RestError naming the file (not a GGUF file, no gguf package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise RestError(
            "rest model import needs the `gguf` package (transformers reads GGUF files through it): "
            "`make setup` installs it"
        ) from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
    except (ValueError, KeyError, OSError) as exc:
        raise RestError(f"{path}: not a GGUF file with a general.architecture ({exc})") from None
    return bytes(field.parts[field.data[0]]).decode()


def import_gguf(file: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `file`'s model and tokenizer to `out` as a transformers checkpoint; returns what import.json holds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    file, out = Path(file), Path(out)
    if not file.is_file():
        raise RestError(f"{file}: no such file; give a .gguf file")
    architecture = gguf_architecture(file)
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise RestError(
            f"{file}: its architecture {architecture!r} is not one transformers can de-quantize "
            f"({', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert it with llama.cpp's tools or use the "
            "original checkpoint"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the de-quantizing bar: one line of ours says what was written
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        if tokenizer is None:
            raise RestError(f"{file}: transformers found no tokenizer in it; a GGUF file of a model carries its own")
        loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        # a plain model of the same config takes the de-quantized weights: that one saves. The config loses the
        # GGUF `quantization_config`, or the checkpoint would load as "quantized" again and refuse to be saved
        config = copy.deepcopy(loaded.config)
        for stale in ("quantization_config", "_name_or_path"):
            if hasattr(config, stale):
                delattr(config, stale)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        record = {
            "source": file.name,
            "sha256": sha256_file(file),
            "architecture": architecture,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    (staging / IMPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)  # complete or absent: an interrupted import leaves only the .tmp directory
    return record
