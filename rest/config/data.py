"""The `data` section: where the splits are and how their columns map to ours."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rest.config.base import Section

SPLITS = ("train", "pool", "valid", "test")
OUR_COLUMNS = ("source", "reference", "source_id", "messages")


class DataConfig(Section):
    """Where each split lives: a Parquet, JSONL, JSON or CSV file, a directory of Parquet files, or a `datasets`
    hub id (`name`, `name:split` or `name:config:split`).

    Columns: `source` (the model input) or `messages` (a conversation: a list of {role, content}; a last assistant
    turn is the reference), `reference` (the wanted output; may be missing in `pool` when the reward needs no
    reference), optional `source_id` (stable row id; made from the row number when absent). `columns` maps these
    names to the file's; every other column is kept (rewards read them, Grow's shards carry them).
    """

    columns: dict[str, Any] = Field(
        {},
        description="our column names -> the file's, for every split ({source: question, reference: answer}) "
        "and/or per split ({test: {source: problem}}); ours are source, reference, source_id, messages",
    )

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, Any]) -> dict[str, Any]:
        def check(mapping: dict, where: str) -> None:
            for ours, theirs in mapping.items():
                if ours in SPLITS and where == "data.columns":
                    if not isinstance(theirs, dict):
                        raise ValueError(f"data.columns.{ours} is a split: give it a mapping such as {{source: q}}")
                    check(theirs, f"data.columns.{ours}")
                    continue
                if ours not in OUR_COLUMNS:
                    raise ValueError(
                        f"{where}: {ours!r} is not one of our columns ({', '.join(OUR_COLUMNS)}) nor a split "
                        f"({', '.join(SPLITS)}); map ours to yours: {{source: question}}"
                    )
                if not isinstance(theirs, str) or not theirs:
                    raise ValueError(f"{where}.{ours}: the file's column name, a string (got {theirs!r})")

        check(v, "data.columns")
        return v

    def columns_for(self, split: str) -> dict[str, str]:
        """The mapping (ours -> the file's) of one split: the shared entries, overridden by the split's own."""
        shared = {k: v for k, v in self.columns.items() if k not in SPLITS}
        return {**shared, **self.columns.get(split, {})}

    train: str = Field("data/numbers/train.parquet", description="labelled pairs D for BC and for mixing into Improve")
    pool: str | None = Field(
        "data/numbers/pool.parquet",
        description="sources Grow samples from; their references feed the reward only, never training targets",
    )
    valid: str = Field("data/numbers/valid.parquet", description="model selection: every policy is evaluated here")
    test: str = Field("data/numbers/test.parquet", description="reported once, for policy-0 and the best policy")
    grow_on: Literal["pool", "train", "train+pool"] = Field(
        "pool", description="which sources Grow samples for; ReST grows on the sources of D (`train`) or a pool"
    )


# `device`: auto (a GPU when torch sees one), cpu, cuda, cuda:N, mps.
