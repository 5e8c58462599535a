"""Hostile import files, generated: the classes that once hung, crashed or lost data, and more.

Each `Case` writes its file at a given size (`small` for the test suite, `limit` for bench/hostile_inputs.py,
which sizes them at storage/limits.py's limits) and says what `guildtune dataset import` must answer:
the exit code and the words the message must contain. Shared by tests/test_hostile_inputs.py and the bench.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.limits import (MAX_IMPORT_BYTES, MAX_IMPORT_ROWS, MAX_JSON_DEPTH, MAX_JSON_VALUES, MAX_MESSAGE_CHARS,
                            MAX_NUMBER_DIGITS, MAX_TABLE_COLUMNS, MAX_XLSX_ROWS, MAX_XLSX_UNPACKED_BYTES)

INVISIBLE = "\u200b\u2060\ufeff\u200e\u200f\u202a\u202e\u2066\u00ad"  # zero-width, BOM, bidi marks, soft hyphen
ROOM = MAX_IMPORT_BYTES - 4096  # a file "at the limit": as large as the import takes, with room for the rest


@dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[Path, int], Path]  # (folder, size) -> the file; size counts what the case is about
    small: int  # the size the test suite uses: large enough that quadratic work would show
    limit: int  # the size at the limit (the bench)
    exit_code: int
    says: tuple[str, ...]  # words the message must contain
    unit: str = "chars"


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


def _alpaca(name: str, instruction: str, output: str) -> Callable[[Path, int], Path]:
    return lambda folder, n: _write(folder, name, json.dumps([{"instruction": instruction, "output": output}]))


def long_word_json(folder: Path, n: int) -> Path:
    """One field of n word characters with a mojibake pair at its end (the check used to be quadratic)."""
    return _write(folder, "long_word.json", json.dumps([{"instruction": "q", "output": "a" * n + "Ã©"}],
                                                       ensure_ascii=False))


def long_word_jsonl(folder: Path, n: int) -> Path:
    return _write(folder, "long_word.jsonl", json.dumps({"instruction": "q", "output": "é" + "x" * n}) + "\n")


def long_word_txt(folder: Path, n: int) -> Path:
    """A guanaco answer that is one word of mojibake pairs ("Ã©" is "é" saved through the wrong encoding)."""
    return _write(folder, "long_word.txt", "### Human: q\n### Assistant: " + "Ã©" * (n // 2) + "\n")


def long_cell_csv(folder: Path, n: int) -> Path:
    return _write(folder, "long_cell.csv", "prompt,response\nq," + "w" * n + "\n")


def many_columns_csv(folder: Path, n: int) -> Path:
    return _write(folder, "wide.csv", ",".join(["prompt", "response"] + [f"c{i}" for i in range(n - 2)]) + "\nq,a\n")


def duplicate_columns_csv(folder: Path, n: int) -> Path:
    return _write(folder, "dup_header.csv", ",".join(["prompt", "response"] + ["Notes"] * (n - 2)) + "\nq,a\n")


def unclosed_quote_csv(folder: Path, n: int) -> Path:
    return _write(folder, "unclosed.csv", 'prompt,response\nq1,"a1\n' + "q2,a2\n" * n)


def quote_then_text_csv(folder: Path, n: int) -> Path:
    return _write(folder, "quote_text.csv", 'prompt,response\n' + "q,a\n" * n + 'q1,"a1" and more\n')


def invisible_prompt_csv(folder: Path, n: int) -> Path:
    return _write(folder, "invisible.csv", "prompt,response\n" + "q,a\n" * n + f"{INVISIBLE * 3},answer\n")


def deep_json(folder: Path, n: int) -> Path:
    return _write(folder, "deep.json", "[" * n + "]" * n)


def deep_object_json(folder: Path, n: int) -> Path:
    return _write(folder, "deep_object.json", '{"a":' * n + "1" + "}" * n)


def nested_at_limit_json(folder: Path, n: int) -> Path:
    """A valid row whose extra field nests exactly n levels deep, counting the array and the row."""
    meta = '{"a":' * (n - 2) + "1" + "}" * (n - 2)
    return _write(folder, "nested_at_limit.json", '[{"instruction": "q", "output": "a", "meta": ' + meta + "}]")


def deep_jsonl(folder: Path, n: int) -> Path:
    row = json.dumps({"instruction": "q", "output": "a"})
    return _write(folder, "deep.jsonl", f"{row}\n" + "[" * n + "]" * n + "\n")


def big_int_json(folder: Path, n: int) -> Path:
    return _write(folder, "big_int.json", '[{"instruction": "q", "output": "a", "id": ' + "9" * n + "}]")


def big_int_jsonl(folder: Path, n: int) -> Path:
    return _write(folder, "big_int.jsonl", '{"instruction": "q", "output": "a", "id": ' + "7" * n + "}\n")


def zeros_json(folder: Path, n: int) -> Path:
    return _write(folder, "zeros.json", "[" + ",".join(["0"] * n) + "]")


def rows_jsonl(folder: Path, n: int) -> Path:
    return _write(folder, "rows.jsonl", "".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n"
                                                for i in range(n)))


def brackets_in_strings_json(folder: Path, n: int) -> Path:
    """Rows whose every string holds brackets and escaped quotes: the depth check's worst case."""
    row = {"instruction": 'what is [x] {y} \\"z\\"?', "output": '[[{"quoted"}]] \\'}
    return _write(folder, "brackets.json", json.dumps([row] * n))


def escaped_quotes_json(folder: Path, n: int) -> Path:
    """An unterminated string full of escaped quotes (a backtracking pattern would take quadratic time)."""
    return _write(folder, "escaped_quotes.json", '["' + '\\"' * n)


def lone_surrogate_json(folder: Path, n: int) -> Path:
    return _write(folder, "surrogate.json", '[{"instruction": "q' + "x" * n + '\\ud800", "output": "a"}]')


def invisible_prompt_json(folder: Path, n: int) -> Path:
    return _write(folder, "invisible.json", json.dumps([{"instruction": INVISIBLE * n, "output": "a"}],
                                                       ensure_ascii=False))


def many_turns_sharegpt(folder: Path, n: int) -> Path:
    turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": f"t{i}"} for i in range(n)]
    return _write(folder, "turns.json", json.dumps([{"conversations": turns}]))


def many_keys_json(folder: Path, n: int) -> Path:
    row = {"instruction": "q", "output": "a", **{f"k{i}": "" for i in range(n)}}
    return _write(folder, "many_keys.json", json.dumps([row]))


def blank_lines_txt(folder: Path, n: int) -> Path:
    return _write(folder, "blank_lines.txt", "### Human: a\n### Assistant: b\n" + " \n" * n
                  + "### Human: c\n### Assistant: d\n")


def too_big_json(folder: Path, n: int) -> Path:
    path = folder / "too_big.json"
    with path.open("wb") as stream:  # sparse: the size is there without writing it
        stream.write(b"[")
        stream.truncate(n)
    return path


def not_utf8_json(folder: Path, n: int) -> Path:
    return _write(folder, "latin1.json", json.dumps([{"instruction": "q" * n, "output": "a"}]).encode() + b"\xff\xfe]")


# ------------------------------------------------------------------------------------------------ XLSX
_XLSX_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '</Types>'),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets>'
        '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
        'Target="worksheets/sheet1.xml"/></Relationships>'),
}
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_WORKSHEET = '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'


def _cell(ref: str, text: str) -> str:
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


def _header_rows() -> str:
    return f'<row r="1">{_cell("A1", "prompt")}{_cell("B1", "response")}</row>' \
           f'<row r="2">{_cell("A2", "q")}{_cell("B2", "a")}</row>'


_SHARED_STRINGS_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
_SHARED_STRINGS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"


def _xlsx(folder: Path, name: str, sheet_parts: list[str], padding: int = 0, doctype: str = "",
          shared: list[str] | None = None) -> Path:
    """A minimal workbook written by hand (so a bomb needs no bomb-sized work here); `padding` bytes of
    spaces go into the sheet XML, streamed through the compressor; `shared`: the shared-strings table
    (what Excel writes; cells point into it with t="s")."""
    path = folder / name
    parts = dict(_XLSX_PARTS)
    if shared is not None:
        parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
            "</Types>", f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_SHARED_STRINGS_TYPE}"/></Types>')
        parts["xl/_rels/workbook.xml.rels"] = parts["xl/_rels/workbook.xml.rels"].replace(
            "</Relationships>", f'<Relationship Id="rId2" Type="{_SHARED_STRINGS_REL}" Target="sharedStrings.xml"/>'
                                "</Relationships>")
        parts["xl/sharedStrings.xml"] = (
            _XML_DECLARATION + '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            + "".join(f"<si><t>{text}</t></si>" for text in shared) + "</sst>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for part, xml in parts.items():
            archive.writestr(part, xml)
        with archive.open("xl/worksheets/sheet1.xml", "w") as sheet:
            sheet.write((_XML_DECLARATION + doctype + _WORKSHEET).encode())
            chunk = b" " * (1 << 20)
            for start in range(0, padding, len(chunk)):
                sheet.write(chunk[:min(len(chunk), padding - start)])
            for piece in sheet_parts:
                sheet.write(piece.encode())
            sheet.write(b"</worksheet>")
    return path


def xlsx_claims_rows(folder: Path, n: int) -> Path:
    """Two real rows and one cell at row n: read as stored, that is n rows to walk through."""
    return _xlsx(folder, "claims_rows.xlsx", ['<dimension ref="A1:XFD1048576"/><sheetData>', _header_rows(),
                                              f'<row r="{n}">{_cell(f"A{n}", "x")}</row></sheetData>'])


def xlsx_wide(folder: Path, n: int) -> Path:
    from openpyxl.utils import get_column_letter

    column = get_column_letter(n)
    return _xlsx(folder, "wide.xlsx", ["<sheetData>", _header_rows(),
                                       f'<row r="3">{_cell(f"{column}3", "far away")}</row></sheetData>'])


def xlsx_whitespace_bomb(folder: Path, n: int) -> Path:
    return _xlsx(folder, "whitespace.xlsx", ["<sheetData>", _header_rows(), "</sheetData>"], padding=n)


def xlsx_entity_bomb(folder: Path, n: int) -> Path:
    """"Billion laughs": n levels of entities, each ten of the one below, in the sheet's XML."""
    entities = '<!ENTITY e0 "lol">' + "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, n + 1))
    return _xlsx(folder, "entities.xlsx", ["<sheetData>", _header_rows(),
                                           f'<row r="3">{_cell("A3", f"&e{n};")}</row></sheetData>'],
                 doctype=f"<!DOCTYPE worksheet [{entities}]>")


def xlsx_big_number(folder: Path, n: int) -> Path:
    return _xlsx(folder, "big_number.xlsx", ["<sheetData>", _header_rows(),
                                             f'<row r="3"><c r="A3"><v>{"9" * n}</v></c></row></sheetData>'])


def xlsx_rows(folder: Path, n: int) -> Path:
    """n rows of question and answer, stored as Excel stores text: in the shared-strings table."""
    shared = ["prompt", "response"] + [text for r in range(n) for text in (f"Question {r}?", f"Answer {r}.")]
    rows = "".join(f'<row r="{r + 2}"><c r="A{r + 2}" t="s"><v>{2 * r + 2}</v></c>'
                   f'<c r="B{r + 2}" t="s"><v>{2 * r + 3}</v></c></row>' for r in range(n))
    header = '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
    return _xlsx(folder, "rows.xlsx", ["<sheetData>", header, rows, "</sheetData>"], shared=shared)


LONG = MAX_MESSAGE_CHARS + 1
CASES = [
    # one long field, in each text format: refused for its length, after a linear read
    Case("json: one 300k-char word", long_word_json, 300_000, ROOM, 1, ("characters; the limit is 8,000",)),
    Case("jsonl: one long word", long_word_jsonl, 300_000, ROOM, 1, ("characters; the limit is 8,000",)),
    Case("txt: one long mojibake word", long_word_txt, 300_000, ROOM // 2, 1, ("characters; the limit is 8,000",)),
    Case("csv: one cell over the csv field limit", long_cell_csv, 200_000, ROOM, 1,
         ("line 2", "longer than 131,072 characters")),
    Case("csv: a cell just over the message limit", long_cell_csv, LONG, LONG, 1, ("characters; the limit is 8,000",)),
    # tables
    Case("csv: columns at the limit", many_columns_csv, MAX_TABLE_COLUMNS, MAX_TABLE_COLUMNS, 0, ("Imported 1",),
         "columns"),
    Case("csv: columns over the limit", many_columns_csv, 10_000, ROOM // 10, 1, ("more than 1,000",), "columns"),
    Case("csv: one header repeated", duplicate_columns_csv, MAX_TABLE_COLUMNS, MAX_TABLE_COLUMNS, 1,
         ("Notes more than once",), "columns"),
    Case("csv: a quote never closed", unclosed_quote_csv, 3, ROOM // 6, 1, ("line 2", "never closed"), "rows"),
    Case("csv: text after a closing quote", quote_then_text_csv, 2, MAX_IMPORT_ROWS - 1, 1,
         ("followed by more text",), "rows"),
    Case("csv: a prompt of invisible characters", invisible_prompt_csv, 5, MAX_IMPORT_ROWS - 1, 1,
         ("invisible characters", "row"), "rows"),
    Case("xlsx: a cell at row 1,048,576", xlsx_claims_rows, 1_048_576, 1_048_576, 1,
         (f"more than {MAX_XLSX_ROWS:,} rows",), "rows"),
    Case("xlsx: a cell in column XFD", xlsx_wide, 16_384, 16_384, 1, ("16,384 cells", "more than 1,000"), "columns"),
    Case("xlsx: a zip of whitespace", xlsx_whitespace_bomb, MAX_XLSX_UNPACKED_BYTES + 1, 4 * MAX_XLSX_UNPACKED_BYTES,
         1, ("unpacks to", "more than 160 MiB"), "bytes"),
    Case("xlsx: entities that expand a billion times", xlsx_entity_bomb, 9, 9, 1, ("not a readable .xlsx",), "levels"),
    Case("xlsx: a number of 5,000 digits", xlsx_big_number, 5_000, ROOM // 2, 1, ("not a readable .xlsx",), "digits"),
    Case("xlsx: rows at the limit", xlsx_rows, 500, MAX_XLSX_ROWS - 1, 0, ("Imported",), "rows"),
    # JSON structure
    Case("json: arrays nested 100k deep", deep_json, 100_000, ROOM // 2, 1, (f"more than {MAX_JSON_DEPTH} levels",),
         "levels"),
    Case("json: objects nested 5k deep", deep_object_json, 5_000, ROOM // 6, 1, (f"more than {MAX_JSON_DEPTH}",),
         "levels"),
    Case("json: nesting at the limit", nested_at_limit_json, MAX_JSON_DEPTH, MAX_JSON_DEPTH, 0, ("Imported 1",),
         "levels"),
    Case("json: nesting one over the limit", nested_at_limit_json, MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 1, 1,
         (f"line 1 nests arrays/objects more than {MAX_JSON_DEPTH} levels deep",), "levels"),
    Case("jsonl: one line nested 5k deep", deep_jsonl, 5_000, ROOM // 2, 1, ("line 2", "levels deep"), "levels"),
    Case("json: an integer of 5,000 digits", big_int_json, 5_000, ROOM, 1,
         (f"the limit is {MAX_NUMBER_DIGITS} digits", "row 1"), "digits"),
    Case("jsonl: an integer of 5,000 digits", big_int_jsonl, 5_000, ROOM, 1,
         (f"the limit is {MAX_NUMBER_DIGITS} digits", "line 1"), "digits"),
    Case("json: an array of zeros", zeros_json, MAX_IMPORT_ROWS + 1, MAX_JSON_VALUES - 1, 1, ("more than 100,000 rows",), "rows"),
    Case("jsonl: one row over the limit", rows_jsonl, MAX_IMPORT_ROWS + 1, MAX_IMPORT_ROWS + 1, 1,
         ("more than 100,000 rows",), "rows"),
    Case("json: brackets in every string", brackets_in_strings_json, 2_000, MAX_IMPORT_ROWS, 0, ("Imported",), "rows"),
    Case("json: an unclosed string of escaped quotes", escaped_quotes_json, 1_000_000, ROOM // 2, 1,
         ("not valid JSON",)),
    Case("json: keys in one row, up to the value limit", many_keys_json, 20_000, MAX_JSON_VALUES - 10, 0,
         ("Imported 1",), "keys"),
    Case("json: an array of 32M zeros", zeros_json, MAX_JSON_VALUES + 1, ROOM // 2, 1,
         (f"holds more than {MAX_JSON_VALUES:,} values",), "rows"),
    Case("json: keys in one row, over the value limit", many_keys_json, MAX_JSON_VALUES, ROOM // 17, 1,
         (f"holds more than {MAX_JSON_VALUES:,} values",), "keys"),
    Case("sharegpt: 20k turns", many_turns_sharegpt, 20_000, MAX_JSON_VALUES // 4, 1, ("lists", "at most 64"), "turns"),
    # text that is not what it looks like
    Case("json: a lone surrogate", lone_surrogate_json, 10, MAX_MESSAGE_CHARS - 10, 1,
         ("lone UTF-16 surrogate", "row 1")),
    Case("json: a prompt of invisible characters", invisible_prompt_json, 100, ROOM // 30, 1,
         ("invisible characters",)),
    Case("json: not UTF-8", not_utf8_json, 1_000_000, ROOM, 1, ("not UTF-8",)),
    Case("txt: blank lines between two conversations", blank_lines_txt, 1_000_000, ROOM // 2, 0, ("Imported 2",),
         "lines"),
    Case("json: over the file size limit", too_big_json, MAX_IMPORT_BYTES + 1, MAX_IMPORT_BYTES + 1, 1,
         ("larger than 64 MiB",), "bytes"),
]
