"""Telling a file's format from its container and the keys of its first row."""
from __future__ import annotations

from storage.formats import alpaca, guanaco, openai_messages, pairs, sharegpt
from storage.formats.errors import FORCE_FORMAT_HINT, ImportFormatError
from storage.formats.readers import Record

FORMATS = ("alpaca", "sharegpt", "messages", "guanaco", "pairs", "csv", "xlsx")
DESCRIPTIONS = {
    "alpaca": "instruction/input/output (+ system, history)",
    "sharegpt": "conversations: [{from: human|gpt, value}]",
    "messages": "messages: [{role, content}] (OpenAI/TRL JSONL)",
    "guanaco": 'text with "### Human: … ### Assistant: …"',
    "pairs": "input_text/target_text",
    "csv": "columns prompt/response[/system] or instruction/input/output",
    "xlsx": "the same columns in an Excel workbook",
}
# Most specific first: a sharegpt row may have a "messages" key, a guanaco row only needs "text".
_JSON_FORMATS = (("sharegpt", sharegpt.matches), ("messages", openai_messages.matches), ("alpaca", alpaca.matches),
                 ("pairs", pairs.matches), ("guanaco", guanaco.matches))


def known_formats() -> str:
    return "; ".join(f"{name} ({DESCRIPTIONS[name]})" for name in FORMATS)


def row_format(row: object) -> str | None:
    if not isinstance(row, dict):
        return None
    return next((name for name, matches in _JSON_FORMATS if matches(row)), None)


def detect_format(records: list[Record], container: str, name: str, column_map: dict | None) -> str:
    if container in ("csv", "xlsx"):
        return container
    if container == "txt":
        return "guanaco"
    first = next((r.value for r in records if r.error is None and isinstance(r.value, dict)), None)
    if first is None:
        raise ImportFormatError(f"{name} has no JSON object rows, so its format can't be told.")
    found = row_format(first)
    if found:
        return found
    if column_map:
        return "pairs"
    keys = ", ".join(repr(k) for k in list(first)[:12]) or "no keys"
    raise ImportFormatError(
        f"Can't tell the format of {name}: its first row has {keys}. Known formats: {known_formats()}. "
        f"Rename the keys to match one of them, {FORCE_FORMAT_HINT}, "
        "or map your own keys with --column prompt=KEY --column response=KEY.")
