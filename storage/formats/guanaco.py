"""Guanaco text: "### Human: … ### Assistant: …" (an optional "### System: …" first).

Rows are JSON/JSONL objects with a `text` field, or a plain .txt file in which a conversation starts at a
"### Human:" (or "### System:") line that follows a blank line; turns of one conversation follow each
other without a blank line before their "### Human:". Whitespace around each turn is trimmed.
"""
from __future__ import annotations

import re

from storage.formats.errors import RowError
from storage.formats.readers import LineIndex, Record, check_row_count
from storage.formats.turns import Turn, text_field
from storage.formats.turns import to_conversation as checked
from storage.records import Conversation

MARKER = re.compile(r"###\s*+(Human|Assistant|System)\s*+:", re.IGNORECASE)
SPEAKERS = {"human": "user", "assistant": "assistant", "system": "system"}
_BLANK_LINE = re.compile(r"\n[ \t]*+\n")
_TRAILING_SPACE = re.compile(r"\s*+")


def matches(row: dict) -> bool:
    return isinstance(row.get("text"), str) and MARKER.search(row["text"]) is not None


def text_to_conversation(text: str, field: str = "text") -> Conversation:
    markers = list(MARKER.finditer(text))
    if not markers:
        raise RowError(field, 'has no "### Human:" / "### Assistant:" markers',
                       'write each turn as "### Human: question" then "### Assistant: answer"')
    before = text[:markers[0].start()].strip()
    if before:
        raise RowError(field, f'has text before the first "###" marker ({before[:40]!r})',
                       'start the text with "### Human:" (or "### System:"), or remove the stray text')
    turns = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        role = SPEAKERS[marker.group(1).lower()]
        content = text[marker.end():end].strip()
        turns.append(Turn(role, content, f"{field} (turn {i + 1}, ### {marker.group(1)})"))
    return checked(turns)


def to_conversation(row: dict) -> Conversation:
    return text_to_conversation(text_field(row.get("text"), "text"))


def _conversation_starts(text: str) -> list[int]:
    """Offsets of the "### Human:"/"### System:" markers that follow a blank line. The whitespace before
    each marker is scanned backwards only as far as the previous marker, so the work stays linear."""
    starts, previous_end = [], 0
    for marker in MARKER.finditer(text):
        if marker.group(1).lower() != "assistant":
            gap = text[previous_end:marker.start()][::-1]
            space = gap[:_TRAILING_SPACE.match(gap).end()][::-1]  # the whitespace right before the marker
            if _BLANK_LINE.search(space):
                starts.append(marker.start())
        previous_end = marker.end()
    return starts


def read_txt(text: str, where: str = "the file") -> list[Record]:
    """Split a .txt file into conversations; each record's location is the line it starts on."""
    records, start, lines = [], 0, LineIndex(text)
    for end in _conversation_starts(text) + [len(text)]:
        block = text[start:end]
        if block.strip():
            check_row_count(where, len(records) + 1)
            line = lines.line(start + len(block) - len(block.lstrip()))
            records.append(Record(f"conversation {len(records) + 1} (line {line})", {"text": block}))
        start = end
    return records
