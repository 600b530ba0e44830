"""Build the embedded verifiable task: arithmetic word problems with a worked solution and a checkable answer.

Run: .venv/bin/python data/build_arith.py   (writes data/arith/{train,pool,valid,test}.parquet)

A problem is a start quantity and one or two events ("She buys 7 more.", "She gets 3 bags with 4 pens each.",
"She gives away 5."); the solution is one line per arithmetic step, ending in GSM8K's answer line:

    source:    Dora has 12 pens. She gets 3 bags with 4 pens each. She gives away 5. How many pens does she have now?
    reference: 3 * 4 = 12. 12 + 12 = 24. 24 - 5 = 19. #### 19

So outputs are a chain of steps of varying length (1 to 4 lines), and a reward checks only the final answer (the
`math` verifier: what follows ####), never the text of the solution: ReST-EM's setting. Columns: source_id, source,
reference (the worked solution), answer (the final number, as text), steps (arithmetic lines). Deterministic: the
same seed gives byte-identical files, which are committed (`make run` needs no download); the four splits hold
disjoint problems.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = {"train": 1000, "pool": 1000, "valid": 300, "test": 500}
NAMES = [("Anna", "She", "she"), ("Ben", "He", "he"), ("Dora", "She", "she"), ("Emil", "He", "he")]
ITEMS = ["apples", "pens", "cards", "coins", "books", "shells"]
SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("reference", pa.string()),
        ("answer", pa.string()),
        ("steps", pa.int64()),
    ]
)


def problem(rng: random.Random) -> tuple[str, str, int, int]:
    """(question, worked solution, answer, arithmetic lines) of one random problem."""
    name, pronoun, subject = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    have = rng.randint(2, 20)
    text = [f"{name} has {have} {item}."]
    lines = []
    for _ in range(rng.randint(1, 2)):
        kind = rng.choice(["buy", "bags", "give", "double"])
        if kind == "give" and have < 2:
            kind = "buy"
        if kind == "double" and have > 50:
            kind = "give"
        if kind == "buy":
            b = rng.randint(1, 9)
            text.append(f"{pronoun} buys {b} more.")
            lines.append(f"{have} + {b} = {have + b}.")
            have += b
        elif kind == "bags":
            b, c = rng.randint(2, 5), rng.randint(2, 9)
            text.append(f"{pronoun} gets {b} bags with {c} {item} each.")
            lines += [f"{b} * {c} = {b * c}.", f"{have} + {b * c} = {have + b * c}."]
            have += b * c
        elif kind == "give":
            b = rng.randint(1, min(9, have - 1))
            text.append(f"{pronoun} gives away {b}.")
            lines.append(f"{have} - {b} = {have - b}.")
            have -= b
        else:
            text.append(f"{pronoun} doubles them.")
            lines.append(f"{have} * 2 = {have * 2}.")
            have *= 2
    text.append(f"How many {item} does {subject} have now?")
    return " ".join(text), " ".join(lines + [f"#### {have}"]), have, len(lines)


def build(out: Path, seed: int) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    out.mkdir(parents=True, exist_ok=True)
    for split, n in SPLITS.items():
        rows: dict[str, list] = {k: [] for k in SCHEMA.names}
        while len(rows["source"]) < n:
            question, solution, answer, steps = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            rows["source_id"].append(f"{split}-{len(rows['source']):05d}")
            rows["source"].append(question)
            rows["reference"].append(solution)
            rows["answer"].append(str(answer))
            rows["steps"].append(steps)
        pq.write_table(pa.table(rows, schema=SCHEMA), out / f"{split}.parquet")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "arith"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(Path(args.out), args.seed)
