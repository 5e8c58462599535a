"""JSON parsed within storage/limits.py's bounds.

Python's parser recurses once per nesting level (a RecursionError past about 1,000) and turns digits into an
int in quadratic time (a ValueError past 4,300 digits). Both are checked here first, in time linear in the
text, so a hostile file is refused by a message that names the limit instead of a traceback or a stall.
"""
from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from storage.limits import MAX_JSON_DEPTH, MAX_JSON_VALUES, MAX_NUMBER_DIGITS


class JsonLimitError(Exception):
    """`problem` completes "the file …" / "row 3 …"; `line` is where it happens, when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


DEPTH_FIX = ("a dataset row needs at most 4 levels (a list of rows, a row, its list of messages, a message), "
             "so this is not a dataset, or it is broken")
NUMBER_FIX = "write it as text in quotes if it matters, or remove it"
VALUES_FIX = "split it into smaller files, or drop the fields a dataset does not need"

_KEPT = b'[]{},"\n'
_DROP = bytes(c for c in range(256) if c not in _KEPT)  # every other byte (UTF-8 puts no ASCII in a letter)
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1, ord("\n"): 0}
_CHUNK = 1 << 20
_LONG_LINE = re.compile(rb"^[^\n]{%d,}" % (MAX_JSON_DEPTH + 1), re.MULTILINE)


def check_shape(text: str, *, lines_apart: bool = False) -> None:
    """Raise JsonLimitError (with the line) where arrays/objects nest deeper than MAX_JSON_DEPTH, or where
    one document holds more than MAX_JSON_VALUES values (the parser's time and memory grow with them).

    Brackets and commas inside strings do not count. `lines_apart`: each line is its own document (JSON
    Lines). Only str/bytes methods run over the whole text (escaped backslashes and quotes are removed,
    then everything but brackets, commas, quotes and newlines), so a 64 MiB file takes a fraction of a second.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "") if "\\" in text else text  # \\ pairs first, as JSON reads them
    skeleton = unescaped.encode("utf-8", "surrogatepass").translate(None, _DROP)
    if lines_apart:
        for long_line in _LONG_LINE.finditer(skeleton):  # a shorter line cannot nest that deep or hold that many
            _check_document(_outside_strings(long_line.group()), skeleton.count(b"\n", 0, long_line.start()))
    elif len(skeleton) > MAX_JSON_DEPTH:
        _check_document(_outside_strings(skeleton), 0)


def _check_document(outside: bytes, lines_before: int) -> None:
    if outside.count(b",") >= MAX_JSON_VALUES:
        raise JsonLimitError(f"holds more than {MAX_JSON_VALUES:,} values (object entries and array items; "
                             "the limit)", lines_before + 1 if lines_before else None)
    brackets = outside.replace(b",", b"")
    at = _first_too_deep(brackets)
    if at is not None:
        raise JsonLimitError(_depth_problem(), lines_before + brackets.count(b"\n", 0, at) + 1)


def _outside_strings(skeleton: bytes) -> bytes:
    """The brackets, commas and newlines that are not between a pair of quotes. A parser only reaches a bracket
    after valid JSON, where the quotes pair up exactly like this."""
    skeleton = skeleton.replace(b'""', b"")  # strings without brackets or commas; the quotes left keep their parity
    kept, inside = [], False
    for start in range(0, len(skeleton), _CHUNK):  # a chunk at a time: a split makes one object per piece
        pieces = skeleton[start:start + _CHUNK].split(b'"')
        kept.append(b"".join(pieces[1 if inside else 0::2]))
        inside ^= len(pieces) % 2 == 0
    return b"".join(kept)


def _depth_problem() -> str:
    return f"nests arrays/objects more than {MAX_JSON_DEPTH} levels deep (the limit)"


def _first_too_deep(skeleton: bytes) -> int | None:
    """Offset of the first bracket that opens level MAX_JSON_DEPTH + 1. Depth moves by one per bracket, so
    that level is reached exactly; the running depths are built a chunk at a time to bound memory."""
    depth = 0
    for start in range(0, len(skeleton), _CHUNK):
        running = list(accumulate(map(_STEP.__getitem__, skeleton[start:start + _CHUNK]), initial=depth))
        if max(running) > MAX_JSON_DEPTH:
            return start + running.index(MAX_JSON_DEPTH + 1) - 1
        depth = running[-1]
    return None


def _bounded_int(digits: str) -> int:
    if len(digits) > MAX_NUMBER_DIGITS and len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise JsonLimitError(f"has a number {len(digits.lstrip('-')):,} digits long; the limit is "
                             f"{MAX_NUMBER_DIGITS} digits")
    return int(digits)


DECODER = json.JSONDecoder(parse_int=_bounded_int)


def loads(text: str) -> Any:
    """json.loads with the integer limit (call check_shape on the text first). JSONDecodeError as usual."""
    return DECODER.decode(text)
