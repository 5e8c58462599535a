"""Reading files into rows: bytes → checked UTF-8 text → JSON array / JSONL / CSV / XLSX records.

Every record carries a location a person can find in the file ("line 12", "row 3 (line 14)").
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from xml.etree.ElementTree import ParseError

from storage.formats import json_limits
from storage.formats.errors import ImportFormatError, RowError, type_name
from storage.formats.json_limits import JsonLimitError
from storage.limits import (MAX_IMPORT_BYTES, MAX_IMPORT_ROWS, MAX_MESSAGE_CHARS, MAX_TABLE_COLUMNS, MAX_XLSX_ROWS,
                            MAX_XLSX_UNPACKED_BYTES, size_text)

_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
             ".xlsx": "xlsx", ".xlsm": "xlsx", ".txt": "txt"}


@dataclass
class Record:
    """One row of a file: a decoded value, or the error that stopped it from being decoded."""

    location: str
    value: Any = None
    error: RowError | None = None


def container_of(path: Path, format: str | None) -> str:
    """How to read the file: the forced csv/xlsx format wins, then the file extension, then JSON."""
    if format in ("csv", "xlsx"):
        return format
    return _SUFFIXES.get(path.suffix.lower(), "json" if format != "guanaco" else "txt")


def read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing, unreadable, empty or too large file is refused by name."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_IMPORT_BYTES + 1)  # never more: the size a stat reports can lie (/proc)
    except FileNotFoundError:
        raise ImportFormatError(f"{path} does not exist: check the path.") from None
    except IsADirectoryError:
        raise ImportFormatError(f"{path} is a folder: give the path of a file inside it.") from None
    except OSError as exc:
        raise ImportFormatError(f"{path} can't be read ({exc.strerror or exc}).") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise too_many(path.name, f"is larger than {size_text(MAX_IMPORT_BYTES)}", "split it into smaller files "
                       "(e.g. `split -l 100000 big.jsonl part-` for JSON Lines) and import them one by one")
    if _BLANK_BYTES.match(data):
        raise ImportFormatError(f"{path.name} is empty: there is nothing to import. Check you exported the right file.")
    return data


_BLANK_BYTES = re.compile(rb"(?:\xef\xbb\xbf)?\s*+\Z")  # stops at the first character that is not blank


def read_text(path: Path) -> tuple[str, list[str]]:
    """The file as UTF-8 text (a UTF-8 BOM is fine) plus warnings; other encodings are named and refused."""
    data = read_bytes(path)
    if data.startswith(b"PK\x03\x04"):
        raise ImportFormatError(
            f"{path.name} is a zip archive (an Excel .xlsx workbook?), not text. "
            "If it is a workbook, rename it to .xlsx (or use --format xlsx); otherwise unzip it first.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[:200].count(b"\x00") > 20:
        raise ImportFormatError(
            f"{path.name} is UTF-16 text, not UTF-8. Re-save it as UTF-8 (in Excel: 'CSV UTF-8'), "
            f"or convert it: `iconv -f utf-16 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`.")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(_not_utf8_message(path, data, exc)) from None
    warning = double_encoding_warning(path, text)
    return text, [warning] if warning else []


def _not_utf8_message(path: Path, data: bytes, exc: UnicodeDecodeError) -> str:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    bad = data[exc.start:exc.start + 1]
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    snippet = data[max(line_start, exc.start - 20):exc.start + 20].split(b"\n")[0]
    snippet_text = snippet.decode("cp1252", errors="replace").strip()
    return (
        f"{path.name} is not UTF-8 text: byte 0x{bad.hex().upper()} at byte offset {exc.start} "
        f"(line {line}, column {column}) is not valid UTF-8"
        + (f' (read as Windows-1252 it says "…{snippet_text}…")' if snippet_text else "")
        + ". The file was probably saved as Windows-1252/Latin-1 (Excel's plain 'CSV' and old Windows editors do that). "
        f"Re-save it as UTF-8 (in Excel: 'CSV UTF-8'), or convert it: "
        f"`iconv -f cp1252 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}` "
        "(if it is in another encoding, e.g. GBK or Shift-JIS, put that name after -f)."
    )


def too_many(where: str, what: str, fix: str) -> ImportFormatError:
    """A file past one of storage/limits.py's limits: refused before the work grows with it."""
    return ImportFormatError(f"{where} {what}, the most one import takes. Fix: {fix}.")


# UTF-8 read as Windows-1252 turns each non-ASCII letter into one of these leads and a follower.
_MOJIBAKE_PAIR = re.compile(r"[ÃÂâÅÐÑ][\x80-\xbf\u0152-\u2122]")
_WORD_CHARS = r"\w\x80-\xbf\u0152-\u2122"  # letters plus every follower
_WORD_AHEAD = re.compile(f"[{_WORD_CHARS}]*+")
_WORD_REACH = 60  # characters looked at on each side of a pair: a word, or a window of a run longer than words


def double_encoding_warning(path: Path, text: str) -> str | None:
    """Spot UTF-8 that was decoded as Windows-1252 and saved again ("cafÃ©" for "café").

    Finds each lead/follower pair, then the word around it (at most _WORD_REACH characters each way); the
    scan resumes after it, so every character is looked at a bounded number of times.
    """
    if text.isascii():  # every lead is a non-ASCII letter; this check runs at memory speed
        return None
    resume = 0
    while match := _MOJIBAKE_PAIR.search(text, resume):
        reach = max(resume, match.start() - _WORD_REACH)
        start = match.start() - _WORD_AHEAD.match(text[reach:match.start()][::-1]).end()
        end = _WORD_AHEAD.match(text, match.start(), match.start() + _WORD_REACH).end()
        word, resume = text[start:end], end
        try:
            repaired = word.encode("cp1252").decode("utf-8")
        except UnicodeError:
            continue
        if repaired != word:
            line = text.count("\n", 0, start) + 1
            return (
                f'{path.name} line {line}: "{word}" looks like garbled text ("{repaired}" saved through the wrong '
                "encoding once). The text was imported as written; if it is garbled, fix the source file "
                "(open it as UTF-8, not Windows-1252) and import again."
            )
    return None


class LineIndex:
    """Character offset → line number, for offsets asked in increasing order (a walk through the file):
    each call counts only the newlines since the previous one, so a whole walk stays linear."""

    def __init__(self, text: str) -> None:
        self.text, self.offset, self.number = text, 0, 1

    def line(self, offset: int) -> int:
        if offset < self.offset:
            self.offset, self.number = 0, 1
        self.number += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.number


def line_start(text: str, number: int) -> int:
    """Offset of line `number` (1-based), or of the text's end when it has fewer lines."""
    offset = 0
    for _ in range(number - 1):
        offset = text.find("\n", offset) + 1
        if offset == 0:
            return len(text)
    return offset


def _json_error(path: Path, text: str, exc: json.JSONDecodeError) -> ImportFormatError:
    line_text = text.split("\n")[exc.lineno - 1]
    excerpt = line_text[max(0, exc.colno - 31):exc.colno + 39].strip()
    return ImportFormatError(
        f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        + (f" (near `{excerpt}`)" if excerpt else "")
        + ". A missing comma, quote or bracket just before that point is the usual cause; "
        f"`python -m json.tool {path.name}` shows the same position."
    )


def _limit_error(path: Path, exc: JsonLimitError, where: str | None = None) -> ImportFormatError:
    where = where or (f"line {exc.line}" if exc.line else "")
    fix = (json_limits.DEPTH_FIX if "nests" in exc.problem else
           json_limits.VALUES_FIX if "values" in exc.problem else json_limits.NUMBER_FIX)
    return ImportFormatError(f"{path.name}{' ' + where if where else ''} {exc.problem}. Fix: {fix}.")


def read_json(path: Path, text: str) -> list[Record]:
    """A JSON array of objects, one JSON object, or (despite a .json name) one object per line."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array(path, text)
    if stripped.startswith("{"):
        try:
            json_limits.check_shape(text)
            value = json_limits.loads(text)
        except JsonLimitError as exc:
            if "\n" in text.strip() and _first_line_is_object(text):  # JSON Lines: each line is checked alone
                return read_jsonl(path, text)
            raise _limit_error(path, exc) from None
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" or _first_line_is_object(text):
                return read_jsonl(path, text)
            raise _json_error(path, text, exc) from None
        return [Record(f"line {LineIndex(text).line(len(text) - len(stripped))}", value)]
    raise ImportFormatError(
        f"{path.name} does not start with '[' or '{{', so it is not JSON"
        f" (it starts with `{stripped[:30]}`). Give a JSON array of objects, JSON Lines (one object per line), "
        "a .csv/.xlsx file, or a .txt file in the guanaco '### Human: … ### Assistant: …' format.")


def _first_line_is_object(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        json_limits.check_shape(first)
        return isinstance(json_limits.loads(first), dict)
    except (json.JSONDecodeError, JsonLimitError):
        return False


def _json_array(path: Path, text: str) -> list[Record]:
    """Walk the array element by element so each row knows the line it starts on."""
    try:
        json_limits.check_shape(text)
    except JsonLimitError as exc:
        raise _limit_error(path, exc) from None
    try:
        return _walk_array(path, text)
    except ImportFormatError:
        raise
    except json.JSONDecodeError as exc:  # inside a row: the same error and position the parser gives
        raise _json_error(path, text, exc) from None
    except (ValueError, IndexError):
        pass
    try:  # the walk stopped: let the standard parser say exactly where the JSON is broken
        value = json_limits.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, text, exc) from None
    except JsonLimitError as exc:
        raise _limit_error(path, exc) from None
    check_row_count(path.name, len(value))
    return [Record(f"row {i}", item) for i, item in enumerate(value, 1)]


def check_row_count(where: str, count: int) -> None:
    """Refuse the file as soon as it holds more rows than MAX_IMPORT_ROWS."""
    if count > MAX_IMPORT_ROWS:
        raise too_many(where, f"has more than {MAX_IMPORT_ROWS:,} rows",
                       "split it into smaller files and import them one by one")


def _walk_array(path: Path, text: str) -> list[Record]:
    lines, records = LineIndex(text), []
    ws = re.compile(r"\s*+")
    pos = ws.match(text, ws.match(text).end() + 1).end()  # past '['
    if text[pos] == "]":
        end = pos + 1
    else:
        while True:
            where = f"row {len(records) + 1} (line {lines.line(pos)})"
            try:
                item, end = json_limits.DECODER.raw_decode(text, pos)
            except JsonLimitError as exc:
                raise _limit_error(path, exc, where) from None
            records.append(Record(where, item))
            if len(records) > MAX_IMPORT_ROWS:
                check_row_count(path.name, len(records))
            pos = ws.match(text, end).end()
            if text[pos] == ",":
                pos = ws.match(text, pos + 1).end()
            elif text[pos] == "]":
                end = pos + 1
                break
            else:
                raise ValueError("expected , or ]")
    if text[end:].strip():
        raise ValueError("extra data after the array")
    return records


def read_jsonl(path: Path, text: str) -> list[Record]:
    """One JSON object per line; a bad line is a row error, so the other lines still get checked."""
    try:
        json_limits.check_shape(text, lines_apart=True)
    except JsonLimitError as exc:
        raise _limit_error(path, exc) from None
    records = []
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]  # not splitlines():
    check_row_count(path.name, len(numbered))  # JSON strings may hold U+2028; the count is known before parsing
    for number, line in numbered:
        try:
            records.append(Record(f"line {number}", json_limits.loads(line)))
        except json.JSONDecodeError as exc:
            records.append(Record(f"line {number}", error=RowError(
                None, f"is not valid JSON ({exc.msg}, column {exc.colno})",
                "each line must be one complete JSON object; look for a missing quote, comma or brace, "
                "or an object split over several lines")))
        except JsonLimitError as exc:
            records.append(Record(f"line {number}", error=RowError(None, exc.problem, json_limits.NUMBER_FIX)))
    return records


def require_objects(records: list[Record]) -> None:
    """Rows of a JSON file must be objects; anything else becomes that row's error."""
    for record in records:
        if record.error is None and not isinstance(record.value, dict):
            record.error = RowError(None, f"is {type_name(record.value)}, not an object",
                                    'each row must be a JSON object like {"instruction": …, "output": …}')


def read_csv(path: Path, text: str) -> tuple[list[str], list[Record]]:
    """Header + rows of a CSV (comma, semicolon or tab separated). Row numbers match a spreadsheet's."""
    first_line = text[:text.find("\n")] if "\n" in text else text
    delimiter = "\t" if path.suffix.lower() == ".tsv" else max(",;\t|", key=first_line.count)
    if first_line.count(delimiter) == 0:
        delimiter = ","
    if first_line.count(delimiter) >= MAX_TABLE_COLUMNS:
        raise _too_wide(path.name, 1, first_line.count(delimiter) + 1)
    return _table(path, _csv_rows(path, text, delimiter))


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterable[list[str]]:
    """The CSV's rows; strict, so a quote that is never closed stops the import instead of swallowing rows."""
    lines = (line.group() for line in _CSV_LINE.finditer(text))  # one line at a time, not a copy of the text
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, text, delimiter, first_line, str(exc)) from None
        yield row


_CSV_LINE = re.compile(r"[^\r\n]*+(?:\r\n|\r|\n)|[^\r\n]++\Z")  # the lines open(newline="") reads
# A quoted cell ("" is a quote inside it), and an unquoted one; possessive, so a failed match never backtracks.
_QUOTED_CELL = re.compile(r'"[^"]*+(?:""[^"]*+)*+"')
_QUOTE_FIX = 'close the quote, or write a quote inside a quoted cell as two quotes ("")'


def _csv_error(path: Path, text: str, delimiter: str, first_line: int, problem: str) -> ImportFormatError:
    """Name the line of the quote that broke the row that starts on `first_line`."""
    quote_at, closed = _bad_quote(text, line_start(text, first_line), delimiter)
    quote_line = text.count("\n", 0, quote_at) + 1 if quote_at is not None else first_line
    if "field limit" in problem:
        limit = csv.field_size_limit()
        message = f"{path.name}: the row that starts on line {first_line} has a cell longer than {limit:,} characters"
        if quote_at is not None and not closed:
            return ImportFormatError(f"{message}: the quote (\") that opens a cell on line {quote_line} is never "
                                     f"closed, so the rows after it run into that cell. Fix: {_QUOTE_FIX}.")
        return ImportFormatError(f"{message}. Fix: shorten it (an example's message may be at most "
                                 f"{MAX_MESSAGE_CHARS:,} characters) or split it into several examples.")
    if quote_at is not None and not closed:
        return ImportFormatError(
            f"{path.name} line {quote_line}: a quote (\") opens a cell here and is never closed, so every row "
            f"after it would be read into that one cell. Fix: {_QUOTE_FIX}.")
    if quote_at is not None:
        return ImportFormatError(
            f"{path.name} line {quote_line}: the quoted cell that starts here is followed by more text before the "
            f"next {'tab' if delimiter == chr(9) else repr(delimiter)}. Fix: put the whole cell in quotes and write "
            'each quote inside it as two quotes ("").')
    return ImportFormatError(f"{path.name} line {first_line} is not readable CSV ({problem}). "
                             "Fix: re-export it from your spreadsheet as 'CSV UTF-8'.")


def _bad_quote(text: str, offset: int, delimiter: str) -> tuple[int | None, bool]:
    """(offset of the quote that opens the broken cell of the row at `offset`, whether it is closed).

    Walks the row cell by cell: a quoted cell that never closes, or that is followed by text other than
    the delimiter or the line's end. (None, False) when every cell is well formed.
    """
    unquoted = re.compile(f"[^{re.escape(delimiter)}\r\n]*+")  # a quote inside an unquoted cell is text
    pos = offset
    while pos < len(text):
        if text[pos] == '"':
            cell = _QUOTED_CELL.match(text, pos)
            if cell is None:
                return pos, False
            if cell.end() < len(text) and text[cell.end()] not in (delimiter, "\r", "\n"):
                return pos, True
            pos = cell.end()
        else:
            pos = unquoted.match(text, pos).end()
        if pos >= len(text) or text[pos] in "\r\n":
            return None, False
        pos += 1  # past the delimiter
    return None, False


def _too_wide(where: str, row: int, cells: int) -> ImportFormatError:
    return too_many(where, f"has {cells:,} cells in row {row}, more than {MAX_TABLE_COLUMNS:,}",
                    "keep only the prompt/response (and system) columns, or move the extra columns to another file")


def read_xlsx(path: Path) -> tuple[list[str], list[Record]]:
    """Header + rows of the workbook's first sheet, cells as text; a zip bomb is refused before it unpacks."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    read_bytes(path)
    unreadable = ("If it is an old .xls file or another format, open it in Excel or LibreOffice and save it "
                  "as .xlsx or as 'CSV UTF-8'.")
    with path.open("rb") as stream:  # a stream, so a workbook with another extension still opens
        try:
            with zipfile.ZipFile(stream) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
            if unpacked > MAX_XLSX_UNPACKED_BYTES:
                raise too_many(path.name, f"unpacks to {size_text(unpacked)}, more than "
                               f"{size_text(MAX_XLSX_UNPACKED_BYTES)}",
                               "save the sheet as 'CSV UTF-8' and import that, or split the workbook")
            stream.seek(0)
            workbook = openpyxl.load_workbook(stream, read_only=True, data_only=True)
        except ImportFormatError:
            raise
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError, ParseError) as exc:
            raise ImportFormatError(f"{path.name} is not a readable .xlsx workbook ({exc}). {unreadable}") from None
        try:
            sheet = workbook.worksheets[0]
            sheet.reset_dimensions()  # rows as stored, not padded to the size the file claims
            header, records = _table(path, _sheet_rows(path, sheet), sheet=sheet.title)
        except ImportFormatError:
            raise
        except (zipfile.BadZipFile, ValueError, TypeError, KeyError, ParseError) as exc:  # a broken part, met late
            raise ImportFormatError(f"{path.name} is not a readable .xlsx workbook ({exc}). {unreadable}") from None
        finally:
            workbook.close()
    return header, records


def _sheet_rows(path: Path, sheet: Any) -> Iterable[list[str]]:
    for number, row in enumerate(sheet.iter_rows(values_only=True), 1):
        if number > MAX_XLSX_ROWS:
            raise too_many(f"{path.name} (sheet {sheet.title!r})", f"has more than {MAX_XLSX_ROWS:,} rows, "
                           "counting empty ones", "delete the empty rows below the data (or save the sheet as "
                           "'CSV UTF-8' and import that)")
        if len(row) > MAX_TABLE_COLUMNS:
            raise _too_wide(f"{path.name} (sheet {sheet.title!r})", number, len(row))
        yield [_cell_text(v) for v in row]


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _table(path: Path, rows: Iterable[list[str]], sheet: str | None = None) -> tuple[list[str], list[Record]]:
    where = f"{path.name} (sheet {sheet!r})" if sheet else path.name
    numbered = []
    for n, row in enumerate(rows, 1):
        if len(row) > MAX_TABLE_COLUMNS:
            raise _too_wide(where, n, len(row))
        if any(cell.strip() for cell in row):
            check_row_count(where, len(numbered))  # the header is not a row
            numbered.append((n, row))
    if not numbered:
        raise ImportFormatError(f"{where} is empty: there is nothing to import.")
    header_row, header = numbered[0][0], [cell.strip() for cell in numbered[0][1]]
    named = Counter(h.casefold() for h in header if h)
    duplicates = sorted({h for h in header if h and named[h.casefold()] > 1})
    if duplicates:
        raise ImportFormatError(f"{where}: the header row (row {header_row}) has the column(s) "
                                f"{', '.join(duplicates)} more than once; rename or remove the copies.")
    records = []
    for number, row in numbered[1:]:
        extra = [cell for i, cell in enumerate(row) if cell.strip() and (i >= len(header) or not header[i])]
        value = {name: (row[i] if i < len(row) else "") for i, name in enumerate(header) if name}
        error = None
        if extra:
            error = RowError(None, f"has text in a column without a header ({extra[0][:40]!r})",
                             "give that column a name in the header row, or move the text into a named column")
        records.append(Record(f"row {number}", value, error))
    if not records:
        raise ImportFormatError(f"{where} has a header row but no rows below it: there is nothing to import.")
    return header, records
