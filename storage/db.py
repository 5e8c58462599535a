"""Opening the database and forward-only migrations, on either engine (storage/engine.py).

Each process (bot, trainer daemon, training job) opens its own `Database`. With SQLite (the
default), WAL mode and `BEGIN IMMEDIATE` transactions keep them consistent on one machine; with
`GUILDTUNE_DB=postgresql://…` the server does, across hosts. Either way the database is the only
channel between the bot and the trainer.
"""
from __future__ import annotations

import re
import sqlite3
from importlib.resources import files
from pathlib import Path
from typing import Any, AsyncContextManager, Sequence

from storage.engine import Engine, Session, connect
from storage.engine_target import parse_target
from storage.sqlite_path import DatabaseOpenError, unusable

__all__ = ["Database", "DatabaseOpenError", "LATEST_VERSION", "migrations"]

MIGRATION_NAME = re.compile(r"^V(\d+)__([a-z0-9_]+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every shipped migration, in order."""
    found = []
    for entry in files("storage").joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [v for v, _, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations must be numbered V1, V2, ... without gaps; found {numbers}")
    return found


LATEST_VERSION = len(migrations())


class Database:
    """One per process. Repositories hang off it: `db.examples`, `db.runs`, ..."""

    def __init__(self, engine: Engine):
        from storage.answers import AnswerRepository
        from storage.examples import ExampleRepository
        from storage.guild_settings import GuildSettingsRepository
        from storage.runs import RunRepository
        from storage.versions import VersionRepository

        self.engine = engine
        self.target = engine.target
        self.examples = ExampleRepository(self)
        self.answers = AnswerRepository(self)
        self.runs = RunRepository(self)
        self.versions = VersionRepository(self)
        self.settings = GuildSettingsRepository(self)

    @classmethod
    async def open(cls, target: str | Path, *, migrate_to: int | None = None) -> "Database":
        """Open (creating if needed) and migrate to `migrate_to` (default: latest).

        `target`: a SQLite file path, `sqlite:///path`, or `postgresql://…`. A SQLite path that cannot
        hold the database (a folder, a device, another program's file, a read-only place) raises
        DatabaseOpenError before anything is written; a file that is not SQLite is never touched."""
        engine = await connect(parse_target(target))
        db = cls(engine)
        try:  # the connection must be closed on any failure, or the process never exits
            await db.migrate(migrate_to)
        except BaseException as exc:
            await engine.close()
            if isinstance(exc, sqlite3.Error):
                raise DatabaseOpenError(unusable(str(target), exc)) from None
            raise
        return db

    async def close(self) -> None:
        await self.engine.close()

    async def schema_version(self) -> int:
        return await self.engine.schema_version()

    async def migrate(self, target: int | None = None) -> list[int]:
        """Apply every migration above the stored version, each in its own transaction."""
        target = LATEST_VERSION if target is None else target
        applied = []
        for version, _name, sql in migrations():
            if version > target:
                break
            async with self.transaction() as tx:
                if version <= await self.schema_version():
                    continue  # another process got there first
                for statement in _split_sql(sql):
                    await tx.execute(self.engine.ddl(statement))
                await self.engine.set_schema_version(tx, version)
            applied.append(version)
        return applied

    def transaction(self) -> AsyncContextManager[Session]:
        """A write transaction; one writer at a time across every process using this database
        (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock taken first). Repositories may read,
        check and then write inside it without another writer slipping in between."""
        return self.engine.transaction()

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One row (`row["column"]`, `row[0]`) or None; inside a transaction, on its connection."""
        return await self.engine.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.engine.fetchall(sql, params)


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (comments dropped; our migrations hold no ';' in strings)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
