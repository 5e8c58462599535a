"""Approved examples → chat `datasets.Dataset`s, split deterministically into train and eval.

The split is decided by a hash of each example's id alone, so an example stays on the same side
across runs as the data grows (the gate's comparison of candidate vs active stays honest).
When the held-out side is smaller than `min_eval` examples, the eval split is the training data
itself and `Split.note` says so: the gate then compares train losses, and the run records why.

Conversations are normalised (roles checked, whitespace trimmed), the guild's system prompt is
put first, and duplicates (same turns after normalisation) are dropped, keeping the oldest id.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from trainer.config import DEFAULT_EVAL_FRACTION, DEFAULT_MIN_EVAL_EXAMPLES

if TYPE_CHECKING:
    from datasets import Dataset

Conversation = list[dict[str, str]]


@dataclass
class Split:
    """Train and eval datasets (column `messages`, plus `example_id`) and what was decided on the way."""

    train: "Dataset"
    eval: "Dataset"
    train_ids: list[int]
    eval_ids: list[int]
    #: True when too few examples were held out and eval is the training data (the gate compares train loss).
    eval_is_train: bool
    #: A sentence for moderators when something was unusual (fallback to train loss, dropped examples).
    note: str | None
    dropped_duplicates: list[int] = field(default_factory=list)
    dropped_invalid: dict[int, str] = field(default_factory=dict)


def is_eval_id(example_id: int, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> bool:
    """Whether this example belongs to the held-out split; depends on the id only, never on the data."""
    digest = hashlib.sha256(f"guildtune-split:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def normalise(messages: Sequence[dict]) -> Conversation:
    """Check a conversation and return it trimmed; raise ValueError saying what is wrong."""
    turns: Conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {i} ({role}) is empty")
        if role == "system" and i != 0:
            raise ValueError(f"message {i} is a system message after the start")
        turns.append({"role": role, "content": content.strip()})
    body = turns[1:] if turns and turns[0]["role"] == "system" else turns
    if not body:
        raise ValueError("no user or assistant messages")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"turns must alternate user/assistant starting with user; turn {i} is "
                             f"{message['role']}")
    if body[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an assistant answer")
    return turns


def with_system_prompt(turns: Conversation, system_prompt: str | None) -> Conversation:
    """Put the guild's system prompt first unless the example carries its own."""
    if turns[0]["role"] == "system" or not system_prompt or not system_prompt.strip():
        return turns
    return [{"role": "system", "content": system_prompt.strip()}, *turns]


def _content_key(turns: Conversation) -> str:
    body = [t for t in turns if t["role"] != "system"]
    return json.dumps([[t["role"], " ".join(t["content"].split())] for t in body], ensure_ascii=False)


def build_split(examples: Iterable[tuple[int, Sequence[dict]]], system_prompt: str | None = None, *,
                eval_fraction: float = DEFAULT_EVAL_FRACTION,
                min_eval: int = DEFAULT_MIN_EVAL_EXAMPLES) -> Split:
    """Build the train/eval datasets from `(example_id, messages)` pairs of ONE guild."""
    from datasets import Dataset

    kept: list[tuple[int, Conversation]] = []
    seen: dict[str, int] = {}
    duplicates: list[int] = []
    invalid: dict[int, str] = {}
    for example_id, messages in sorted(examples, key=lambda pair: pair[0]):
        try:
            turns = normalise(messages)
        except ValueError as exc:
            invalid[example_id] = str(exc)
            continue
        key = _content_key(turns)
        if key in seen:
            duplicates.append(example_id)
            continue
        seen[key] = example_id
        kept.append((example_id, with_system_prompt(turns, system_prompt)))
    if not kept:
        raise ValueError("no usable examples to train on" + (
            f" ({len(invalid)} invalid: " + "; ".join(f"#{i}: {r}" for i, r in list(invalid.items())[:3]) + ")"
            if invalid else ""))

    held = [(i, t) for i, t in kept if is_eval_id(i, eval_fraction)]
    notes = []
    if len(held) >= min_eval and len(held) < len(kept):
        train = [(i, t) for i, t in kept if not is_eval_id(i, eval_fraction)]
        evaluation, eval_is_train = held, False
    else:
        train, evaluation, eval_is_train = kept, kept, True
        notes.append(f"only {len(held)} of {len(kept)} examples fall in the held-out split (need {min_eval}), "
                     "so the gate compares training loss instead of held-out loss")
    if duplicates:
        notes.append(f"{len(duplicates)} duplicate example(s) skipped")
    if invalid:
        notes.append(f"{len(invalid)} unusable example(s) skipped (" + "; ".join(
            f"#{i}: {r}" for i, r in list(invalid.items())[:3]) + ")")

    def to_dataset(rows: list[tuple[int, Conversation]]) -> "Dataset":
        return Dataset.from_dict({"messages": [t for _, t in rows], "example_id": [i for i, _ in rows]})

    return Split(train=to_dataset(train), eval=to_dataset(evaluation), train_ids=[i for i, _ in train],
                 eval_ids=[i for i, _ in evaluation], eval_is_train=eval_is_train,
                 note="; ".join(notes) or None, dropped_duplicates=duplicates, dropped_invalid=invalid)
