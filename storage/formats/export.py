"""Writing conversations out: messages JSONL (what TRL reads), alpaca JSON, sharegpt JSON.

Each export parses back (parse_file) into the identical conversations.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from storage.formats import alpaca, openai_messages, sharegpt
from storage.formats.errors import RowError
from storage.formats.turns import Turn, to_conversation
from storage.records import Conversation

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt")
EXPORT_SUFFIXES = {"messages": ".jsonl", "alpaca": ".json", "sharegpt": ".json"}


def _checked(conversation: Conversation, number: int) -> Conversation:
    """Refuse to write a conversation that would not import again."""
    turns = []
    for i, message in enumerate(conversation, 1):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ValueError(f"Conversation {number} can't be exported: message {i} has no text content.")
        turns.append(Turn(message.get("role"), content, f"message {i}"))
    try:
        return to_conversation(turns)
    except RowError as exc:
        raise ValueError(f"Conversation {number} can't be exported: {exc.describe()}") from None


def export_conversations(conversations: Iterable[Conversation], format: str) -> str:
    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    checked = [_checked(c, n) for n, c in enumerate(conversations, 1)]
    if format == "messages":
        return "".join(json.dumps(openai_messages.from_conversation(c), ensure_ascii=False) + "\n" for c in checked)
    convert = alpaca.from_conversation if format == "alpaca" else sharegpt.from_conversation
    return json.dumps([convert(c) for c in checked], ensure_ascii=False, indent=2) + "\n"
