"""Build the embedded task: digits -> German number words.

Run: .venv/bin/python data/build_numbers.py   (writes data/numbers/{train,pool,valid,test,unlabelled}.parquet)

Deterministic: the same seed gives byte-identical files, which are committed so that `make run` needs
no download and no num2words at run time. Numbers are drawn from 0..999999 by first drawing a digit
count uniformly (so short numbers are not drowned by the 900000 six-digit ones), then a number of that
length; the four splits hold disjoint numbers.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from num2words import num2words

SPLITS = {"train": 200, "pool": 2000, "valid": 500, "test": 500}
# The words German numbers below a million are made of. BC can only teach what `train` shows, and Grow only
# samples what the policy can already say: a word missing from `train` would cap every policy's accuracy.
MORPHEMES = [
    "null",
    "eins",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "sechzehn",
    "siebzehn",
    "zwanzig",
    "dreißig",
    "vierzig",
    "fünfzig",
    "sechzig",
    "siebzig",
    "achtzig",
    "neunzig",
    "hundert",
    "tausend",
]
SCHEMA = pa.schema([("source_id", pa.string()), ("source", pa.string()), ("reference", pa.string())])
# Sources without references, disjoint from the four splits: Grow with a learned reward samples for these.
UNLABELLED = 2000


def draw_numbers(total: int, seed: int) -> list[int]:
    """`total` distinct integers in [0, 999999], digit count drawn uniformly from 1..6."""
    rng = random.Random(seed)
    seen: set[int] = set()
    numbers: list[int] = []
    while len(numbers) < total:
        digits = rng.randint(1, 6)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        n = rng.randint(low, 10**digits - 1)
        if n not in seen:  # short lengths run out (10 one-digit numbers): redraw
            seen.add(n)
            numbers.append(n)
    # Short lengths run out early in the draw; shuffle so that every split gets its share of them.
    rng.shuffle(numbers)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "numbers")
    parser.add_argument(
        "--seed", type=int, default=20231060, help="the default is the first seed whose train split covers MORPHEMES"
    )
    args = parser.parse_args()
    numbers = draw_numbers(sum(SPLITS.values()), args.seed)
    train_words = " ".join(num2words(n, lang="de") for n in numbers[: SPLITS["train"]])
    all_words = " ".join(num2words(n, lang="de") for n in numbers)
    missing = [m for m in MORPHEMES if m in all_words and m not in train_words]
    if missing:
        raise SystemExit(f"seed {args.seed}: train never shows {missing}; pick another --seed")
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in SPLITS.items():
        chunk = numbers[start : start + size]
        start += size
        table = pa.table(
            {
                "source_id": [f"{split}-{i:05d}" for i in range(size)],
                "source": [str(n) for n in chunk],
                "reference": [num2words(n, lang="de") for n in chunk],
            },
            schema=SCHEMA,
        )
        pq.write_table(table, args.out / f"{split}.parquet")
        print(f"{split}: {size} rows -> {args.out / f'{split}.parquet'}")
    # Drawn after, from another stream, so that the four labelled splits stay byte-identical to before.
    taken = set(numbers)
    extra = [n for n in draw_numbers(UNLABELLED + len(taken), args.seed + 1) if n not in taken][:UNLABELLED]
    table = pa.table(
        {"source_id": [f"unlabelled-{i:05d}" for i in range(UNLABELLED)], "source": [str(n) for n in extra]},
        schema=pa.schema([("source_id", pa.string()), ("source", pa.string())]),
    )
    pq.write_table(table, args.out / "unlabelled.parquet")
    print(f"unlabelled: {UNLABELLED} rows, no references -> {args.out / 'unlabelled.parquet'}")


if __name__ == "__main__":
    main()
