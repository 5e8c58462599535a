"""A guild's examples to and from dataset files: the one path `guildtune dataset import/export` and
the bot's `/dataset export` share.

Export writes demonstrations (what SFT trains on) by default. Voted answers (preference examples,
issue 15) are never written as the assistant turn of a demonstration: a disliked answer would then
teach whoever trains on the file to give it. They leave only as the `kto` format, TRL's
unpaired-preference rows (storage/formats/kto.py).

Import reads a file (storage.formats.parse_file) and hands its conversations to
`ExampleRepository.add_many`, which validates and writes them; the rows it refuses come back here
with their place in the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from storage.examples import InvalidConversations
from storage.formats import (EXPORT_FORMATS, EXPORT_SUFFIXES, ImportResult, SkippedRow, export_conversations,
                             export_preferences, parse_file)

if TYPE_CHECKING:
    from storage.db import Database

#: The demonstration formats, then "kto" for the voted answers.
KTO_FORMAT = "kto"
DATASET_EXPORT_FORMATS = (*EXPORT_FORMATS, KTO_FORMAT)
EXPORT_STATUSES = ("approved", "pending", "rejected", "all")


class ExportOptionError(ValueError):
    """An unknown export format or status; the message lists the known ones."""


@dataclass(frozen=True)
class DatasetExport:
    text: str
    #: how many examples `text` holds
    count: int
    format: str
    status: str

    @property
    def suffix(self) -> str:
        return EXPORT_SUFFIXES[self.format]

    @property
    def what(self) -> str:
        """What was exported, for messages: "3 approved example(s)" or "3 approved voted answer(s)"."""
        status = "" if self.status == "all" else f"{self.status} "
        kind = "voted answer(s)" if self.format == KTO_FORMAT else "example(s)"
        return f"{self.count} {status}{kind}"


def check_export_options(format: str, status: str) -> None:
    """Raise ExportOptionError for an unknown format or status (before anything is opened)."""
    if format not in DATASET_EXPORT_FORMATS:
        raise ExportOptionError(f"Format {format!r} cannot be exported; use one of "
                                f"{', '.join(DATASET_EXPORT_FORMATS)}.")
    if status not in EXPORT_STATUSES:
        raise ExportOptionError(f"Status {status!r} is not known; use one of {', '.join(EXPORT_STATUSES)}.")


async def export_examples(db: "Database", guild_id: int, *, format: str = "messages",
                          status: str = "approved") -> DatasetExport:
    """The guild's examples with this status (deleted ones never) as a file's text.

    Demonstration formats hold the demonstrations only; "kto" holds the voted answers only.
    Raises ExportOptionError for an unknown format or status, ValueError for a stored conversation
    that could not be read back (named by its place in the export)."""
    check_export_options(format, status)
    rows = await db.examples.list(guild_id, status=None if status == "all" else status)
    rows = [e for e in rows if e.status != "deleted"]
    if format == KTO_FORMAT:
        voted = [(e.messages, e.label == "desirable") for e in rows if e.label is not None]
        return DatasetExport(export_preferences(voted), len(voted), format, status)
    demonstrations = [e.messages for e in rows if e.label is None]
    return DatasetExport(export_conversations(demonstrations, format), len(demonstrations), format, status)


@dataclass
class FileImport:
    """What an import read, wrote, and left out."""

    parsed: ImportResult
    created: int
    duplicates: int
    status: str
    #: rows the file held that could not become examples (with `skip_invalid`), by place in the file
    invalid: list[SkippedRow] = field(default_factory=list)


class InvalidRows(ValueError):
    """Rows of the file that cannot become examples; nothing was imported. `rows` names them all."""

    def __init__(self, rows: list[SkippedRow]):
        super().__init__(f"{len(rows)} invalid row(s), the first at {rows[0].location}: {rows[0].reason}")
        self.rows = rows


async def import_file(db: "Database", guild_id: int, path: Path, *, format: str | None = None,
                      column_map: dict[str, str] | None = None, keep_tool_turns: bool = False,
                      skip_invalid: bool = False, approve: bool = False) -> FileImport:
    """Import a dataset file into the guild's examples: every row or none, unless `skip_invalid`.

    Raises ImportFormatError for a file that can't be read as a whole, InvalidRows for rows that
    can't become examples (both before anything is written)."""
    parsed = parse_file(path, format, column_map=column_map, keep_tool_turns=keep_tool_turns,
                        skip_invalid=skip_invalid)
    status = "approved" if approve else "pending"

    def located(problems) -> list[SkippedRow]:  # add_many's positions → places in the file
        return [SkippedRow(f"{Path(path).name} {parsed.rows[i - 1].location}", problem) for i, problem in problems]

    try:
        added = await db.examples.add_many(guild_id, [row.conversation for row in parsed.rows], source="import",
                                           author_id=None, status=status, skip_invalid=skip_invalid)
    except InvalidConversations as exc:
        raise InvalidRows(located(exc.problems)) from None
    return FileImport(parsed, added.created, added.duplicates, status, located(added.invalid))
