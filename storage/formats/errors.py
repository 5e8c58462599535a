"""Import errors. Every message names the problem, where it is, and how to fix it.

Whole-file problems (encoding, broken JSON, unknown format, empty file) raise ImportFormatError at once.
Row problems are collected as RowError and reported together, so nothing is half-imported.
"""
from __future__ import annotations

# How the CLI spells the options; kept here so the messages match the commands people type.
FORCE_FORMAT_HINT = "force one with `guildtune dataset import FILE --format NAME`"
COLUMN_MAP_HINT = "`--column prompt=Question --column response=Answer`"
SKIP_INVALID_HINT = "`--skip-invalid`"
KEEP_TOOL_TURNS_HINT = "`--keep-tool-turns`"


class ImportFormatError(ValueError):
    """The file cannot be imported as it is; nothing was imported.

    `problems` holds one line per invalid row (all of them; the message shows the first few).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class RowError(Exception):
    """One row is invalid: which field, what is wrong, and how to fix it."""

    def __init__(self, field: str | None, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem
        self.fix = fix

    def describe(self) -> str:
        where = f'field "{self.field}" ' if self.field else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{self.problem}.{fix}"


class SkipRow(Exception):
    """A well-formed row that is deliberately not imported (e.g. tool calls); `reason` is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def type_name(value: object) -> str:
    """The JSON name of a value's type, for messages like 'expected text, got a number'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
