"""Build a task of another shape: English number words -> digits (long sources, short targets; the inverse of the
embedded task's direction), from num2words' English.

Run: .venv/bin/python data/build_words.py   (writes data/words/{train,pool,valid,test}.parquet)

Deterministic: the same seed and num2words version give byte-identical files, committed so that a run needs
neither the package nor a download. Numbers are drawn from 0..999,999,999 by first drawing a digit count uniformly
from 1 to 9, then a number of that length; the four splits hold disjoint numbers. A source is num2words' English
cardinal ("seven hundred and four thousand, two hundred and fifteen"), its reference the digits ("704215").
"""

from __future__ import annotations

import argparse
import random
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from num2words import num2words

SPLITS = {"train": 500, "pool": 4000, "valid": 500, "test": 500}
SCHEMA = pa.schema([("source_id", pa.string()), ("source", pa.string()), ("reference", pa.string())])
NUM2WORDS_VERSION = "0.5.14"  # the version the committed files were built with


def draw_numbers(total: int, seed: int) -> list[int]:
    """`total` distinct integers in [0, 999999999], digit count drawn uniformly from 1..9."""
    rng = random.Random(seed)
    seen: set[int] = set()
    numbers: list[int] = []
    while len(numbers) < total:
        digits = rng.randint(1, 9)
        n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        if n not in seen:
            seen.add(n)
            numbers.append(n)
    return numbers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "words")
    args = ap.parse_args()
    if version("num2words") != NUM2WORDS_VERSION:
        installed = version("num2words")
        raise SystemExit(f"num2words {installed} is installed; the files were built with {NUM2WORDS_VERSION}")
    numbers = draw_numbers(sum(SPLITS.values()), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SPLITS.items():
        chunk = numbers[start : start + size]
        start += size
        table = pa.table(
            {
                "source_id": [f"{split}-{k:05d}" for k in range(size)],
                "source": [num2words(n, lang="en") for n in chunk],
                "reference": [str(n) for n in chunk],
            },
            schema=SCHEMA,
        )
        pq.write_table(table, args.out / f"{split}.parquet")
        print(f"{split}: {size} rows -> {args.out / f'{split}.parquet'}")


if __name__ == "__main__":
    main()
