"""What the bench scripts write: Markdown tables and the sections of docs/benchmarks.md a script owns (standard
library only: bench/gpu_torch.py runs on GPU machines with nothing of ours installed)."""

from __future__ import annotations

from pathlib import Path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: (key, title, format) per column; "" formats as text (left-aligned), None prints "-"."""
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" if fmt == "" else "---:" for _, _, fmt in columns) + "|"
    body = []
    for r in rows:
        cells = [cell(r[k], fmt) for k, _, fmt in columns]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def cell(value, fmt: str) -> str:
    """A value as its column formats it: a text column as text; in a formatted column None as "-" and text (an
    "out of memory") as it is."""
    if not fmt:
        return str(value)
    if value is None:
        return "-"
    return value if isinstance(value, str) else format(value, fmt)


def write_section(out: Path, section: str, markers: tuple[str, str]) -> None:
    """Replace the text between `markers` in `out` (or append it): `make bench` rewrites the rest."""
    begin, end = markers
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        head, rest_ = text.split(begin, 1)
        text = head + block + rest_.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out.write_text(text)
