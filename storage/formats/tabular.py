"""Rows of named columns (CSV, XLSX, hand-made JSON pairs) mapped onto prompt / input / response / system.

Default columns: prompt/response/system, or instruction/input/output. A column map such as
{"prompt": "Question", "response": "Answer"} names other columns. Column names match case-insensitively.
"""
from __future__ import annotations

from storage.formats.errors import COLUMN_MAP_HINT, ImportFormatError
from storage.formats.turns import Turn, text_field
from storage.formats.turns import to_conversation as checked
from storage.records import Conversation

FIELDS = ("prompt", "input", "response", "system")
FIELD_ALIASES = {"instruction": "prompt", "output": "response"}
DEFAULT_COLUMNS = (
    {"prompt": "prompt", "response": "response", "system": "system"},
    {"prompt": "instruction", "input": "input", "response": "output", "system": "system"},
)


def resolve_columns(header: list[str], column_map: dict[str, str] | None, where: str,
                    defaults: tuple[dict[str, str], ...] = DEFAULT_COLUMNS) -> dict[str, str]:
    """field → the header's own column name, or ImportFormatError naming the columns there are."""
    by_folded = {name.strip().casefold(): name for name in header if name.strip()}
    listed = ", ".join(repr(n) for n in by_folded.values()) or "none"
    columns: dict[str, str] = {}
    for default in defaults:
        if all(default[f].casefold() in by_folded for f in ("prompt", "response")):
            columns = {f: by_folded[c.casefold()] for f, c in default.items() if c.casefold() in by_folded}
            break
    for key, column in (column_map or {}).items():
        field = FIELD_ALIASES.get(key.strip().lower(), key.strip().lower())
        if field not in FIELDS:
            raise ImportFormatError(f"The column map names {key!r}, which is not a field: "
                                    f"map any of {', '.join(FIELDS)} (instruction and output also work).")
        if column.strip().casefold() not in by_folded:
            raise ImportFormatError(f"{where} has no column {column!r} (mapped to {field}); its columns are {listed}.")
        columns[field] = by_folded[column.strip().casefold()]
    missing = [f for f in ("prompt", "response") if f not in columns]
    if missing:
        raise ImportFormatError(
            f"{where}: no {' and no '.join(missing)} column found; its columns are {listed}. "
            "Name the columns prompt/response (optionally system), or instruction/input/output, "
            f"or say which columns to use, e.g. {COLUMN_MAP_HINT}.")
    return columns


def to_conversation(row: dict, columns: dict[str, str]) -> Conversation:
    def cell(field: str, required: bool) -> str:
        return text_field(row.get(columns[field]), columns[field], required=required) if field in columns else ""

    turns = []
    system = cell("system", required=False)
    if system:
        turns.append(Turn("system", system, columns["system"]))
    prompt, extra = cell("prompt", required=True), cell("input", required=False)
    turns.append(Turn("user", f"{prompt}\n\n{extra}" if extra else prompt, columns["prompt"]))
    turns.append(Turn("assistant", cell("response", required=True), columns["response"]))
    return checked(turns)
