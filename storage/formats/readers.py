"""Reading files into rows: bytes → checked UTF-8 text → JSON array / JSONL / CSV / XLSX records.

Every record carries a location a person can find in the file ("line 12", "row 3 (line 14)").
"""
from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.formats.errors import ImportFormatError, RowError, type_name

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
    """The file's bytes; a missing, unreadable or empty file is refused by name."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImportFormatError(f"{path} does not exist: check the path.") from None
    except IsADirectoryError:
        raise ImportFormatError(f"{path} is a folder: give the path of a file inside it.") from None
    except OSError as exc:
        raise ImportFormatError(f"{path} can't be read ({exc.strerror}).") from None
    if not data.removeprefix(b"\xef\xbb\xbf").strip():
        raise ImportFormatError(f"{path.name} is empty: there is nothing to import. Check you exported the right file.")
    return data


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


_MOJIBAKE_CANDIDATE = re.compile(r"[\w\x80-\xbf\u0152-\u2122]*[ÃÂâÅÐÑ][\x80-\xbf\u0152-\u2122][\w\x80-\xbf\u0152-\u2122]*")


def double_encoding_warning(path: Path, text: str) -> str | None:
    """Spot UTF-8 that was decoded as Windows-1252 and saved again ("cafÃ©" for "café")."""
    for match in _MOJIBAKE_CANDIDATE.finditer(text):
        word = match.group()
        try:
            repaired = word.encode("cp1252").decode("utf-8")
        except UnicodeError:
            continue
        if repaired != word:
            line = text.count("\n", 0, match.start()) + 1
            return (
                f'{path.name} line {line}: "{word}" looks like garbled text ("{repaired}" saved through the wrong '
                "encoding once). The text was imported as written; if it is garbled, fix the source file "
                "(open it as UTF-8, not Windows-1252) and import again."
            )
    return None


class _Lines:
    """Character offset → line number."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)


def _json_error(path: Path, text: str, exc: json.JSONDecodeError) -> ImportFormatError:
    line_text = text.split("\n")[exc.lineno - 1]
    excerpt = line_text[max(0, exc.colno - 31):exc.colno + 39].strip()
    return ImportFormatError(
        f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        + (f" (near `{excerpt}`)" if excerpt else "")
        + ". A missing comma, quote or bracket just before that point is the usual cause; "
        f"`python -m json.tool {path.name}` shows the same position."
    )


def read_json(path: Path, text: str) -> list[Record]:
    """A JSON array of objects, one JSON object, or (despite a .json name) one object per line."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array(path, text)
    if stripped.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data" or _first_line_is_object(text):
                return read_jsonl(path, text)
            raise _json_error(path, text, exc) from None
        return [Record(f"line {_Lines(text).line(len(text) - len(stripped))}", value)]
    raise ImportFormatError(
        f"{path.name} does not start with '[' or '{{', so it is not JSON"
        f" (it starts with `{stripped[:30]}`). Give a JSON array of objects, JSON Lines (one object per line), "
        "a .csv/.xlsx file, or a .txt file in the guanaco '### Human: … ### Assistant: …' format.")


def _first_line_is_object(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _json_array(path: Path, text: str) -> list[Record]:
    """Walk the array element by element so each row knows the line it starts on."""
    try:
        return _walk_array(text)
    except (json.JSONDecodeError, ValueError, IndexError):
        pass
    try:  # the walk stopped: let the standard parser say exactly where the JSON is broken
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, text, exc) from None
    return [Record(f"row {i}", item) for i, item in enumerate(value, 1)]


def _walk_array(text: str) -> list[Record]:
    decoder, lines, records = json.JSONDecoder(), _Lines(text), []
    ws = re.compile(r"\s*")
    pos = ws.match(text, ws.match(text).end() + 1).end()  # past '['
    if text[pos] == "]":
        end = pos + 1
    else:
        while True:
            item, end = decoder.raw_decode(text, pos)
            records.append(Record(f"row {len(records) + 1} (line {lines.line(pos)})", item))
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
    records = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            records.append(Record(f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            records.append(Record(f"line {number}", error=RowError(
                None, f"is not valid JSON ({exc.msg}, column {exc.colno})",
                "each line must be one complete JSON object; look for a missing quote, comma or brace, "
                "or an object split over several lines")))
    return records


def require_objects(records: list[Record]) -> None:
    """Rows of a JSON file must be objects; anything else becomes that row's error."""
    for record in records:
        if record.error is None and not isinstance(record.value, dict):
            record.error = RowError(None, f"is {type_name(record.value)}, not an object",
                                    'each row must be a JSON object like {"instruction": …, "output": …}')


def read_csv(path: Path, text: str) -> tuple[list[str], list[Record]]:
    """Header + rows of a CSV (comma, semicolon or tab separated). Row numbers match a spreadsheet's."""
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else max(",;\t|", key=first_line.count)
    if first_line.count(delimiter) == 0:
        delimiter = ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise ImportFormatError(f"{path.name} is not a readable CSV file: {exc}. "
                                "Re-export it from your spreadsheet as 'CSV UTF-8'.") from None
    return _table(path, rows)


def read_xlsx(path: Path) -> tuple[list[str], list[Record]]:
    """Header + rows of the workbook's first sheet, cells as text."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    read_bytes(path)
    with path.open("rb") as stream:  # a stream, so a workbook with another extension still opens
        try:
            workbook = openpyxl.load_workbook(stream, read_only=True, data_only=True)
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
            raise ImportFormatError(
                f"{path.name} is not a readable .xlsx workbook ({exc}). If it is an old .xls file or another "
                "format, open it in Excel or LibreOffice and save it as .xlsx or as 'CSV UTF-8'.") from None
        try:
            sheet = workbook.worksheets[0]
            rows = [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
        finally:
            workbook.close()
    return _table(path, rows, sheet=sheet.title)


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


def _table(path: Path, rows: list[list[str]], sheet: str | None = None) -> tuple[list[str], list[Record]]:
    where = f"{path.name} (sheet {sheet!r})" if sheet else path.name
    numbered = [(n, row) for n, row in enumerate(rows, 1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise ImportFormatError(f"{where} is empty: there is nothing to import.")
    header_row, header = numbered[0][0], [cell.strip() for cell in numbered[0][1]]
    named = [h for h in header if h]
    duplicates = sorted({h for h in named if [x.casefold() for x in named].count(h.casefold()) > 1})
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
