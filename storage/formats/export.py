"""Writing conversations out: messages JSONL (what TRL reads), alpaca JSON, sharegpt JSON; and voted
answers as KTO JSONL (prompt/completion/label, what TRL's `KTOTrainer` reads).

Each demonstration export parses back (parse_file) into the identical conversations; a KTO file is
never read back as demonstrations (its rows match no import format).
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from storage.formats import alpaca, kto, openai_messages, sharegpt
from storage.formats.errors import RowError
from storage.formats.turns import Turn, to_conversation
from storage.records import Conversation

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt")
EXPORT_SUFFIXES = {"messages": ".jsonl", "alpaca": ".json", "sharegpt": ".json", "kto": ".jsonl"}


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


def export_preferences(voted: Iterable[tuple[Conversation, bool]]) -> str:
    """(conversation ending in the answer, liked?) pairs as KTO JSONL, one row a line."""
    return "".join(json.dumps(kto.from_conversation(_checked(c, n), desirable), ensure_ascii=False) + "\n"
                   for n, (c, desirable) in enumerate(voted, 1))
