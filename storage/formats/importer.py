"""parse_file: a dataset file → checked conversations, all-or-nothing unless invalid rows are skipped."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storage.formats import alpaca, detect, guanaco, openai_messages, pairs, readers, sharegpt, tabular
from storage.formats.detect import FORMATS
from storage.formats.errors import SKIP_INVALID_HINT, ImportFormatError, RowError, SkipRow
from storage.records import Conversation

MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class ImportedRow:
    location: str  # where in the file, e.g. "line 12" or "row 3 (line 14)"
    conversation: Conversation


@dataclass(frozen=True)
class SkippedRow:
    location: str
    reason: str


@dataclass
class ImportResult:
    format: str
    rows: list[ImportedRow] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. text that looks garbled by a wrong encoding

    def skipped_counts(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    def summary(self) -> str:
        lines = [f"{len(self.rows)} conversation(s) read as {self.format}."]
        lines += [f"Skipped {n} row(s): {reason}" for reason, n in self.skipped_counts().most_common()]
        return "\n".join(lines + self.warnings)


def parse_file(path: Path, format: str | None = None, *, column_map: dict[str, str] | None = None,
               keep_tool_turns: bool = False, skip_invalid: bool = False) -> ImportResult:
    """Read every row of `path` as a conversation.

    `format` forces one of FORMATS (else it is detected). Whole-file problems raise ImportFormatError at
    once; invalid rows are all collected into one ImportFormatError, or skipped (with their reason) when
    `skip_invalid`. Tool-using rows are skipped with a counted reason unless `keep_tool_turns`.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ImportFormatError(f"Unknown format {format!r}. Known formats: {detect.known_formats()}.")
    if column_map and format not in (None, "csv", "xlsx", "pairs"):
        raise ImportFormatError(f"A column map only applies to csv, xlsx and pairs files, not to {format}; "
                                "drop the column map or the format.")
    container, header, records, warnings = _read(path, format)
    if not records:
        raise ImportFormatError(f"{path.name} has no rows: there is nothing to import.")
    if container == "txt" and format not in (None, "guanaco"):
        raise ImportFormatError(f"{path.name} is plain text, which only the guanaco format reads; "
                                f"give a .json/.jsonl file for {format}.")
    if format is None and container == "json" and all(record.error for record in records):
        broken = [(record.location, record.error) for record in records if record.error]
        raise _rows_error(path, "JSON objects", False, broken, len(records), 0, records)
    chosen = format or detect.detect_format(records, container, path.name, column_map)
    convert = _converter(chosen, path, header, records, column_map, keep_tool_turns)

    result = ImportResult(chosen, warnings=warnings)
    errors: list[tuple[str, RowError]] = []
    for record in records:
        try:
            if record.error:
                raise record.error
            result.rows.append(ImportedRow(record.location, convert(record.value)))
        except SkipRow as skip:
            result.skipped.append(SkippedRow(record.location, skip.reason))
        except RowError as error:
            errors.append((record.location, error))
            result.skipped.append(SkippedRow(record.location, f"invalid: {error.describe()}"))
    if errors and not skip_invalid:
        raise _rows_error(path, chosen, format is not None, errors, len(records), len(result.rows), records)
    return result


def _read(path: Path, format: str | None) -> tuple[str, list[str], list[readers.Record], list[str]]:
    """(container, table header, records, warnings) for the file."""
    container = readers.container_of(path, format)
    if container == "xlsx":
        header, records = readers.read_xlsx(path)
        return container, header, records, []
    text, warnings = readers.read_text(path)
    if container == "csv":
        header, records = readers.read_csv(path, text)
        return container, header, records, warnings
    if container == "txt" and not text.lstrip().startswith(("[", "{")):
        return "txt", [], guanaco.read_txt(text, path.name), warnings
    records = readers.read_jsonl(path, text) if container == "jsonl" else readers.read_json(path, text)
    readers.require_objects(records)
    return "json", [], records, warnings


def _converter(fmt: str, path: Path, header: list[str], records: list[readers.Record],
               column_map: dict[str, str] | None, keep_tool_turns: bool) -> Callable[[object], Conversation]:
    if fmt in ("csv", "xlsx"):
        columns = tabular.resolve_columns(header, column_map, path.name)
        return lambda row: tabular.to_conversation(row, columns)
    if fmt == "pairs":
        columns = pairs.columns_for([r.value for r in records if isinstance(r.value, dict)], column_map, path.name)
        return lambda row: pairs.to_conversation(row, columns)
    if fmt == "sharegpt":
        return lambda row: sharegpt.to_conversation(row, keep_tool_turns=keep_tool_turns)
    if fmt == "messages":
        return lambda row: openai_messages.to_conversation(row, keep_tool_turns=keep_tool_turns)
    return {"alpaca": alpaca.to_conversation, "guanaco": guanaco.to_conversation}[fmt]


def _rows_error(path: Path, fmt: str, forced: bool, errors: list[tuple[str, RowError]], total: int,
                valid: int, records: list[readers.Record]) -> ImportFormatError:
    problems = [f"{location}: {error.describe()}" for location, error in errors]
    listed = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > len(listed):
        listed.append(f"… and {len(problems) - len(listed)} more.")
    lines = [f"{path.name}: {len(errors)} of {total} row(s) can't be imported as {fmt}; nothing was imported."]
    lines += [f"  {p}" for p in listed]
    guess = next((detect.row_format(r.value) for r in records if detect.row_format(r.value)), None)
    if forced and valid == 0 and guess and guess != fmt:
        lines.append(f"These rows look like {guess}, not {fmt}: leave the format out, or use --format {guess}.")
    fix = "Fix these rows and import again"
    if valid:
        fix += f", or use {SKIP_INVALID_HINT} to import the {valid} valid row(s) and skip these"
    lines.append(fix + ".")
    return ImportFormatError("\n".join(lines), problems)
