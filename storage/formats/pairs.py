"""Hand-made JSON pairs, the way people export a two-column spreadsheet: input_text / target_text.

A column map (as for CSV) picks other keys; an optional `system` key gives the system prompt.
"""
from __future__ import annotations

from storage.formats import tabular
from storage.records import Conversation

PAIR_COLUMNS = ({"prompt": "input_text", "response": "target_text", "system": "system"},)


def matches(row: dict) -> bool:
    return "input_text" in row and "target_text" in row


def columns_for(rows: list[dict], column_map: dict[str, str] | None, where: str) -> dict[str, str]:
    """The keys to read, from every key any row uses (rows of a hand-made file need not all match)."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return tabular.resolve_columns(keys, column_map, where, defaults=PAIR_COLUMNS + tabular.DEFAULT_COLUMNS)


def to_conversation(row: dict, columns: dict[str, str]) -> Conversation:
    return tabular.to_conversation(row, columns)
