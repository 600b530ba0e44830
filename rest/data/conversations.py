"""Conversations: a `messages` prompt (a list of {role, content}) carried through the pipeline as one text.

Every stage hands sources around as strings (shards, caches, engines, rewards); a conversation is one too: the
canonical JSON of its turns. Only the prompt renderer (models/policy.py, with a chat template) reads it back.

    source = as_source([{"role": "user", "content": "What is 2 + 3?"}])
    conversation(source) == [{"role": "user", "content": "What is 2 + 3?"}]
    conversation("What is 2 + 3?") is None           # a plain source: the user turn, when a template renders it
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


def as_source(turns: list[dict[str, str]]) -> str:
    """The source text of a conversation: compact JSON, keys in a fixed order (the same turns: the same text)."""
    return json.dumps([{"role": t["role"], "content": t["content"]} for t in turns], ensure_ascii=False)


def conversation(source: str) -> list[dict[str, str]] | None:
    """The turns of a source made by as_source, or None for a plain source."""
    if not source.startswith('[{"role": '):
        return None
    try:
        turns = json.loads(source)
    except json.JSONDecodeError:
        return None
    ok = isinstance(turns, list) and all(
        isinstance(t, dict) and set(t) == {"role", "content"} and isinstance(t["content"], str) for t in turns
    )
    return turns if ok else None


def chat_turns(source: str, system_prompt: str | None) -> list[dict[str, str]]:
    """What a chat template renders for a source: its conversation, or the source as the one user turn; the
    system prompt first unless the conversation has a system turn of its own."""
    turns = conversation(source) or [{"role": "user", "content": source}]
    if system_prompt is not None and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": system_prompt}, *turns]
    return turns


def user_text(source: str) -> str:
    """The last user turn of a conversation source (a plain source as it is): what a table shows of it."""
    turns = conversation(source)
    if turns is None:
        return source
    users = [t["content"] for t in turns if t["role"] == "user"]
    return users[-1] if users else turns[-1]["content"]


def split_messages(value: Any) -> tuple[list[dict[str, str]], str | None] | str:
    """(prompt turns, the reply of a last assistant turn or None) of one `messages` value, or what is wrong with it
    (a phrase for the error message)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        return f"not a non-empty list of turns but {type(value).__name__}"
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            return f"turn {i} is not an object with role and content"
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            return f"turn {i} has role {role!r}, not one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"turn {i}'s content is a {type(content).__name__}, not text"
        turns.append({"role": str(role), "content": content})
    reply = None
    if turns[-1]["role"] == "assistant":
        reply = turns.pop()["content"]
    if not turns:
        return "only an assistant turn: no prompt"
    return turns, reply


def turn_texts(sources: list[str]) -> list[str]:
    """The text of every source, a conversation's turns one by one (what a tokenizer from scratch learns from)."""
    out = []
    for source in sources:
        turns = conversation(source)
        out.extend([t["content"] for t in turns] if turns is not None else [source])
    return out
