"""`rest model import FILE.gguf DIR`: a GGUF file as a transformers checkpoint (rest/models/gguf.py)."""

from __future__ import annotations

import argparse


def cmd_model(args: argparse.Namespace) -> None:
    from rest.models.gguf import import_gguf

    record = import_gguf(args.file, args.out)
    print(
        f"{args.out}: {record['architecture']}, {record['parameters']:,} parameters, from {record['source']} "
        f"(sha256 {record['sha256'][:16]}...)"
    )
