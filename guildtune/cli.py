"""The `guildtune` command line. Exit codes: 0 ok, 1 failure, 2 usage or configuration error.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`guildtune --help` and the bot stay quick and light.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from guildtune.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="guildtune: a Discord bot that fine-tunes itself from its community.",
                  no_args_is_help=True, add_completion=False)
dataset_app = typer.Typer(help="Import, export and count a guild's examples.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None


async def open_db(settings: Settings):
    from storage.db import Database

    return await Database.open(settings.db_path)


# ---------------------------------------------------------------- dataset

@dataset_app.command("import")
def dataset_import(
    file: Path = typer.Argument(..., help="JSON, JSONL, CSV, XLSX or TXT file to import."),
    guild: int = typer.Option(..., "--guild", "-g", help="Discord guild (server) id the examples belong to."),
    approve: bool = typer.Option(False, "--approve", help="Import as approved (a moderator's import); default pending."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="Force a format instead of detecting it."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows (each reported) instead of importing nothing."),
    keep_tool_turns: bool = typer.Option(False, "--keep-tool-turns", help="Keep sharegpt tool/function turns as plain text."),
    column: list[str] = typer.Option([], "--column", "-c", help="Column mapping for CSV/XLSX, e.g. -c prompt=Question -c response=Answer."),
) -> None:
    """Import conversations into a guild's examples: all rows or none (unless --skip-invalid)."""
    from storage.conversation import InvalidConversation, validate_conversation
    from storage.formats import FORMATS, ImportFormatError, parse_file

    settings = settings_or_exit()
    if format is not None and format not in FORMATS:
        raise fail(f"--format {format!r} is not known; use one of: {', '.join(FORMATS)}.", 2)
    column_map = {}
    for item in column:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise fail(f"--column {item!r} must look like field=Column Name (e.g. prompt=Question).", 2)
        column_map[key.strip()] = value.strip()
    if not file.is_file():
        raise fail(f"{file} does not exist or is not a file.", 2)
    try:
        result = parse_file(file, format, column_map=column_map or None, keep_tool_turns=keep_tool_turns,
                            skip_invalid=skip_invalid)
    except ImportFormatError as exc:
        raise fail(f"{exc}\nNothing was imported.") from None
    valid, invalid = [], []
    for row in result.rows:
        try:
            valid.append(validate_conversation(row.conversation))
        except InvalidConversation as exc:
            invalid.append(f"{file.name} {row.location}: {exc}")
    if invalid and not skip_invalid:
        listing = "\n  ".join(invalid[:50]) + (f"\n  ... and {len(invalid) - 50} more" if len(invalid) > 50 else "")
        raise fail(f"{len(invalid)} invalid row(s):\n  {listing}\nNothing was imported. Fix the rows, or pass "
                   "--skip-invalid to import the rest.")

    async def write():
        db = await open_db(settings)
        try:
            return await db.examples.add_many(guild, valid, source="import", author_id=None,
                                              status="approved" if approve else "pending")
        finally:
            await db.close()

    added = asyncio.run(write())
    status = "approved" if approve else "pending"
    console.print(f"Imported {added.created} example(s) as {status} into guild {guild} "
                  f"({result.format} format); {added.duplicates} duplicate(s) skipped.", highlight=False)
    skipped = [f"{s.location}: {s.reason}" for s in result.skipped] + invalid
    if skipped:
        console.print(f"Skipped {len(skipped)} row(s):", highlight=False)
        for line in skipped:
            console.print(f"  {line}", highlight=False, markup=False)


@dataset_app.command("export")
def dataset_export(
    guild: int = typer.Option(..., "--guild", "-g", help="Guild id."),
    format: str = typer.Option("messages", "--format", "-f", help="messages (JSONL, what TRL reads), alpaca or sharegpt."),
    status: str = typer.Option("approved", "--status", "-s", help="Which examples: pending, approved, rejected or all."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write; stdout when left out."),
) -> None:
    """Export a guild's examples (approved ones by default)."""
    from storage.formats import export_conversations

    settings = settings_or_exit()
    if format not in ("messages", "alpaca", "sharegpt"):
        raise fail(f"--format {format!r} cannot be exported; use messages, alpaca or sharegpt.", 2)
    if status not in ("pending", "approved", "rejected", "all"):
        raise fail(f"--status {status!r} is not known; use pending, approved, rejected or all.", 2)

    async def read():
        db = await open_db(settings)
        try:
            rows = await db.examples.list(guild, status=None if status == "all" else status)
            return [e.messages for e in rows if e.status != "deleted"]
        finally:
            await db.close()

    conversations = asyncio.run(read())
    text = export_conversations(conversations, format)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"Wrote {len(conversations)} conversation(s) to {output}.", highlight=False)


@dataset_app.command("stats")
def dataset_stats(guild: int = typer.Option(..., "--guild", "-g", help="Guild id.")) -> None:
    """Count a guild's examples by status and by source."""
    settings = settings_or_exit()

    async def read():
        db = await open_db(settings)
        try:
            return await db.examples.stats(guild)
        finally:
            await db.close()

    stats = asyncio.run(read())
    out = Console()
    for title, counts in (("status", stats["status"]), ("source", stats["source"])):
        table = Table(title=f"Examples of guild {guild} by {title}")
        table.add_column(title)
        table.add_column("count", justify="right")
        for key, n in sorted(counts.items()):
            table.add_row(key, str(n))
        table.add_row("total", str(sum(counts.values())), style="bold")
        out.print(table)
