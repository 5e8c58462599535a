"""The `guildtune` command line. Exit codes: 0 ok, 1 failure, 2 usage or configuration error.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`guildtune --help` and the bot stay quick and light.
"""
from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from guildtune.settings import Settings, SettingsError, load_settings
from storage.limits import MAX_DISCORD_ID, MIN_DISCORD_ID

app = typer.Typer(help="guildtune: a Discord bot that fine-tunes itself from its community.",
                  no_args_is_help=True, add_completion=False)
dataset_app = typer.Typer(help="Import, export and count a guild's examples.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
db_app = typer.Typer(help="Move the database between engines (SQLite, PostgreSQL).", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None


def _guild_id(value: int | None) -> int | None:
    if value is not None and not MIN_DISCORD_ID <= value <= MAX_DISCORD_ID:
        raise typer.BadParameter(
            f"{value} is not a Discord server id: ids are whole numbers from {MIN_DISCORD_ID} to {MAX_DISCORD_ID}. "
            "In Discord, turn on Developer Mode (User Settings > Advanced), right-click the server, Copy Server ID.")
    return value


def guild_option(help: str = "Discord guild (server) id."):
    """The --guild option of every command: a Discord id, checked before anything is opened."""
    return typer.Option(..., "--guild", "-g", help=help, callback=_guild_id)


DB_SETTING_HINT = " (The path comes from GUILDTUNE_DB, or GUILDTUNE_DATA_DIR/guildtune.db; see .env.example.)"


def print_table(title: str, columns: tuple[str, str], rows) -> None:
    """A two-column table (name, right-aligned figure) on stdout."""
    table = Table(title=title)
    table.add_column(columns[0])
    table.add_column(columns[1], justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def run_async(coro) -> int:
    """Run a command's coroutine; errors meant for the user are printed without a traceback."""
    from guildtune.runtime import ServiceError
    from serving.protocol import ModelServerError
    from storage.db import DatabaseOpenError
    from trainer.base_model import BaseModelError
    from trainer.chat_template import ChatTemplateError

    try:
        return asyncio.run(coro)
    except DatabaseOpenError as exc:
        raise fail(f"{exc}{DB_SETTING_HINT}", 2) from None
    except (ModelServerError, BaseModelError, ChatTemplateError, ServiceError) as exc:
        raise fail(str(exc)) from None


def input_file(file: Path) -> Path:
    """`file` if it is a regular file, else a usage error that says what it is instead."""
    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        raise fail(f"{_shown(file)} does not exist: check the path.", 2) from None
    except OSError as exc:  # a name too long, a loop of links, no permission on a folder
        raise fail(f"{_shown(file)} cannot be opened ({exc.strerror or exc}).", 2) from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device or a pipe)"
        raise fail(f"{file} is {what}: give the path of a file.", 2)
    return file


def _shown(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:60]}…{text[-40:]} ({len(text):,} characters)"


async def open_db(settings: Settings):
    from storage.db import Database

    return await Database.open(settings.db_path)


# ---------------------------------------------------------------- dataset

@dataset_app.command("import")
def dataset_import(
    file: Path = typer.Argument(..., help="JSON, JSONL, CSV, XLSX or TXT file to import."),
    guild: int = guild_option("Discord guild (server) id the examples belong to."),
    approve: bool = typer.Option(False, "--approve", help="Import as approved (a moderator's import); default pending."),
    format: Optional[str] = typer.Option(None, "--format", "-f", help="Force a format instead of detecting it."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows (each reported) instead of importing nothing."),
    keep_tool_turns: bool = typer.Option(False, "--keep-tool-turns", help="Keep sharegpt tool/function turns as plain text."),
    column: list[str] = typer.Option([], "--column", "-c", help="Column mapping for CSV/XLSX, e.g. -c prompt=Question -c response=Answer."),
) -> None:
    """Import conversations into a guild's examples: all rows or none (unless --skip-invalid)."""
    from storage.dataset_files import InvalidRows, import_file
    from storage.formats import FORMATS, TOOL_SKIP_REASON, ImportFormatError

    settings = settings_or_exit()
    if format is not None and format not in FORMATS:
        raise fail(f"--format {format!r} is not known; use one of: {', '.join(FORMATS)}.", 2)
    column_map = {}
    for item in column:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise fail(f"--column {item!r} must look like field=Column Name (e.g. prompt=Question).", 2)
        column_map[key.strip()] = value.strip()
    input_file(file)

    async def write():
        db = await open_db(settings)
        try:
            return await import_file(db, guild, file, format=format, column_map=column_map or None,
                                     keep_tool_turns=keep_tool_turns, skip_invalid=skip_invalid, approve=approve)
        finally:
            await db.close()

    try:
        done = run_async(write())
    except ImportFormatError as exc:
        raise fail(f"{exc}\nNothing was imported.") from None
    except InvalidRows as exc:
        listing = "\n  ".join(f"{r.location}: {r.reason}" for r in exc.rows[:50])
        more = f"\n  ... and {len(exc.rows) - 50} more" if len(exc.rows) > 50 else ""
        raise fail(f"{len(exc.rows)} invalid row(s):\n  {listing}{more}\nNothing was imported. Fix the rows, or "
                   "pass --skip-invalid to import the rest.") from None
    console.print(done.parsed.summary(), highlight=False, markup=False)
    console.print(f"Imported {done.created} example(s) as {done.status} into guild {guild}; "
                  f"{done.duplicates} duplicate(s) skipped.", highlight=False)
    bad_rows = [f"{s.location}: {s.reason}" for s in done.parsed.skipped + done.invalid
                if s.reason != TOOL_SKIP_REASON]
    if bad_rows:
        console.print(f"Skipped {len(bad_rows)} invalid row(s):", highlight=False)
        for line in bad_rows:
            console.print(f"  {line}", highlight=False, markup=False)


@dataset_app.command("export")
def dataset_export(
    guild: int = guild_option(),
    format: str = typer.Option("messages", "--format", "-f", help="messages (JSONL, what TRL's SFTTrainer reads), "
                               "alpaca or sharegpt: the taught examples; kto: the voted answers as prompt/completion/"
                               "label JSONL (what TRL's KTOTrainer reads)."),
    status: str = typer.Option("approved", "--status", "-s", help="Which examples: pending, approved, rejected or all."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write; stdout when left out."),
) -> None:
    """Export a guild's examples (approved ones by default); voted answers only with --format kto."""
    from storage.dataset_files import ExportOptionError, check_export_options, export_examples

    settings = settings_or_exit()
    try:
        check_export_options(format, status)
    except ExportOptionError as exc:
        raise fail(str(exc), 2) from None

    async def read():
        db = await open_db(settings)
        try:
            return await export_examples(db, guild, format=format, status=status)
        finally:
            await db.close()

    try:
        export = run_async(read())
    except ValueError as exc:  # a stored conversation that would not import again
        raise fail(str(exc)) from None
    if output is None:
        sys.stdout.write(export.text)
    else:
        try:
            output.write_text(export.text, encoding="utf-8")
        except OSError as exc:
            raise fail(f"{_shown(output)} cannot be written ({exc.strerror or exc}): give a file path in a folder "
                       "you can write to.") from None
        console.print(f"Wrote {export.what} to {output}.", highlight=False)


@dataset_app.command("stats")
def dataset_stats(guild: int = guild_option()) -> None:
    """Count a guild's examples by status and by source."""
    settings = settings_or_exit()

    async def read():
        db = await open_db(settings)
        try:
            return await db.examples.stats(guild)
        finally:
            await db.close()

    stats = run_async(read())
    out = Console()
    for title, counts in (("status", stats["status"]), ("source", stats["source"])):
        table = Table(title=f"Examples of guild {guild} by {title}", min_width=44)
        table.add_column(title)
        table.add_column("count", justify="right")
        for key, n in sorted(counts.items()):
            table.add_row(key, str(n))
        table.add_row("total", str(sum(counts.values())), style="bold")
        out.print(table)


# ---------------------------------------------------------------- services

def _require_token(settings: Settings) -> None:
    from guildtune.runtime import TOKEN_HELP

    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise fail(TOKEN_HELP, 2)


def _serve(bot: bool, trainer: bool) -> None:
    from guildtune.runtime import run_services, setup_logging
    from trainer.daemon import install_signal_handlers

    settings = settings_or_exit()
    if bot:
        _require_token(settings)
    setup_logging(settings)

    async def main():
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_services(settings, bot=bot, trainer=trainer, stop=stop)

    run_async(main())


# ---------------------------------------------------------------- db

@db_app.command("copy")
def db_copy(
    source: str = typer.Option(..., "--from", help="The database to copy: a SQLite path, sqlite:///… or postgresql://…"),
    target: str = typer.Option(..., "--to", help="The database to fill, e.g. postgresql://user:password@host/guildtune"),
    replace: bool = typer.Option(False, "--replace", help="Delete the rows a non-empty target holds first."),
) -> None:
    """Copy every table, ids kept, into another database; row counts are checked per table.

    Stop the bot and the trainer first, then point GUILDTUNE_DB at the target."""
    from storage.copy import CopyError, copy_database
    from storage.engine import DatabaseUnavailable
    from storage.engine_target import DatabaseTargetError, parse_target

    try:
        shown_from, shown_to = str(parse_target(source)), str(parse_target(target))
    except DatabaseTargetError as exc:
        raise fail(str(exc), 2) from None
    try:
        counts = asyncio.run(copy_database(source, target, replace=replace))
    except (CopyError, DatabaseUnavailable) as exc:
        raise fail(str(exc)) from None
    print_table(f"{shown_from} → {shown_to}", ("table", "rows"), [(name, f"{n:,}") for name, n in counts.items()])
    console.print(f"Copied {sum(counts.values()):,} rows in {len(counts)} tables; every count matches the source. "
                  f"Set GUILDTUNE_DB={shown_to} for the bot and the trainer.", highlight=False, markup=False)


@app.command()
def up() -> None:
    """Run the bot and the trainer daemon together (Ctrl-C stops both cleanly)."""
    _serve(bot=True, trainer=True)


@app.command()
def bot() -> None:
    """Run only the Discord bot (the trainer runs elsewhere: `guildtune trainer`)."""
    _serve(bot=True, trainer=False)


@app.command()
def trainer() -> None:
    """Run only the trainer daemon: scheduled and /retrain runs, publish and swap."""
    _serve(bot=False, trainer=True)


@app.command()
def train(guild: int = guild_option("Guild id to train now.")) -> None:
    """Train a new version for one guild now, with a progress bar; publish and activate it if it passes the gate."""
    from guildtune.train_command import train_now

    settings = settings_or_exit()
    raise typer.Exit(run_async(train_now(settings, guild, console)))


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to ask."),
    guild: int = guild_option("Guild id whose model answers."),
    version: Optional[int] = typer.Option(None, "--version", "-v", min=1, max=MAX_DISCORD_ID,
                                          help="Ask this version number instead of the active one."),
) -> None:
    """Answer a question from a guild's model through the configured server (streams to the terminal)."""
    from guildtune.ask_command import ask_once

    settings = settings_or_exit()
    raise typer.Exit(run_async(ask_once(settings, guild, question, version, console)))


@app.command()
def demo(
    data_dir: Path = typer.Option(Path("./data/demo"), help="Where the demo keeps its database and versions."),
    steps: int = typer.Option(45, min=1, help="Optimizer steps (45 learn the 20 facts; 4-6 s each on a 2-core CPU)."),
) -> None:
    """The whole loop offline: base answers, training on invented community facts, swap, new answers."""
    from guildtune.demo import run_demo

    raise typer.Exit(run_async(run_demo(data_dir, steps, console)))


@app.command()
def estimate(
    model: str = typer.Argument(..., help="Hugging Face folder, cached id, or 'embedded:gemma-3-270m'."),
    method: str = typer.Option("lora", help="full, lora or qlora."),
    seq_len: int = typer.Option(1024, min=1, help="Sequence length in tokens."),
    batch: int = typer.Option(8, min=1, help="Micro-batch size."),
    lora_r: int = typer.Option(16, min=1, help="LoRA rank."),
    gradient_checkpointing: bool = typer.Option(True, help="Whether activations are recomputed."),
) -> None:
    """Estimate GPU memory for training: weights, gradients, optimizer, activations, total."""
    from trainer.estimate import estimate_memory

    if method not in ("full", "lora", "qlora"):
        raise fail(f"--method {method!r} is not known; use full, lora or qlora.", 2)
    settings = settings_or_exit()
    try:
        est = estimate_memory(model, method=method, seq_len=seq_len, batch_size=batch, lora_r=lora_r,
                              gradient_checkpointing=gradient_checkpointing, models_dir=settings.models_dir)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    print_table(f"{model}: {method}, seq {seq_len}, batch {batch}", ("part", "GiB"),
                [(name, f"{value:.2f}") for name, value in est.rows()])
