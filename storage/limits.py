"""The limits on what members and files may hand us, in one place.

Each bounds the work one input can cause (time and memory stay linear and small: bench/hostile_inputs.py
reads files at these sizes in a few seconds), and every refusal quotes the number from here, so a
message and the code never disagree. Real datasets sit far below them: Alpaca's 52k rows are 22 MB.
"""
from __future__ import annotations

# One example (storage/conversation.py checks these).
MAX_MESSAGE_CHARS = 8_000  # per message; longer texts are split into several examples
MAX_TURNS = 64  # user + assistant turns in one conversation
MAX_LISTED_TURNS = 1_000  # turns a row may list before tool turns are merged (then MAX_TURNS applies)

# One imported file (storage/formats/).
MAX_IMPORT_BYTES = 64 * 1024 * 1024  # the file as stored on disk
MAX_IMPORT_ROWS = 100_000  # rows, lines or conversations read from one file (Alpaca has 52k)
MAX_TABLE_COLUMNS = 1_000  # cells in one CSV/XLSX row
MAX_XLSX_UNPACKED_BYTES = 160 * 1024 * 1024  # a workbook's parts once unzipped (a zip bomb stops here)
MAX_XLSX_ROWS = 25_000  # sheet rows including empty ones: openpyxl reads about 10k a second (use CSV beyond)
MAX_JSON_DEPTH = 64  # arrays/objects inside each other; a dataset row needs 4
MAX_JSON_VALUES = 1_500_000  # entries and items in one JSON document (100,000 alpaca rows hold 300,000)
MAX_NUMBER_DIGITS = 100  # digits of one JSON integer (Python itself stops at 4,300, with a traceback)

# Discord ids are stored as SQLite INTEGER, a signed 64-bit number; 0 and negatives are never ids.
MIN_DISCORD_ID = 1
MAX_DISCORD_ID = 2**63 - 1


def size_text(n_bytes: int) -> str:
    """A byte count the way the messages show it: '64 MiB', '1.5 KiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            value = n_bytes / size
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{n_bytes} bytes"
