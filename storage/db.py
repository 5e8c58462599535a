"""Opening the database: WAL, busy timeout, foreign keys, and forward-only migrations.

Each process (bot, trainer daemon, training job) opens its own `Database`; SQLite's WAL mode and
`BEGIN IMMEDIATE` transactions keep them consistent without any other channel between them.
"""
from __future__ import annotations

import asyncio
import re
import sqlite3
import stat
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import AsyncIterator

import aiosqlite

MIGRATION_NAME = re.compile(r"^V(\d+)__([a-z0-9_]+)\.sql$")
BUSY_TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseOpenError(Exception):
    """The database file cannot be used; the message names the path, why, and what to do."""


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
    """One connection per process. Repositories hang off it: `db.examples`, `db.runs`, ..."""

    def __init__(self, conn: aiosqlite.Connection, path: str):
        from storage.answers import AnswerRepository
        from storage.examples import ExampleRepository
        from storage.guild_settings import GuildSettingsRepository
        from storage.runs import RunRepository
        from storage.versions import VersionRepository

        self.conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()
        self.examples = ExampleRepository(self)
        self.answers = AnswerRepository(self)
        self.runs = RunRepository(self)
        self.versions = VersionRepository(self)
        self.settings = GuildSettingsRepository(self)

    @classmethod
    async def open(cls, path: str | Path, *, migrate_to: int | None = None) -> "Database":
        """Open (creating if needed) and migrate to `migrate_to` (default: latest).

        A path that cannot hold the database (a folder, a device, another program's file, a read-only
        place) raises DatabaseOpenError before anything is written; a file that is not SQLite is never touched.
        """
        path = str(path)
        if path != ":memory:":
            check_database_path(Path(path))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            await asyncio.sleep(0.1)  # aiosqlite stops its thread itself: let it finish while the loop runs
            raise DatabaseOpenError(_unusable(path, exc)) from None
        try:  # the connection's thread must be closed on any failure, or the process never exits
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA synchronous = NORMAL")
            db = cls(conn, path)
            await db.migrate(migrate_to)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise DatabaseOpenError(_unusable(path, exc)) from None
            raise
        return db

    async def close(self) -> None:
        await self.conn.close()

    async def schema_version(self) -> int:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0])

    async def migrate(self, target: int | None = None) -> list[int]:
        """Apply every migration above the file's `user_version`, each in its own transaction."""
        target = LATEST_VERSION if target is None else target
        applied = []
        for version, _name, sql in migrations():
            if version > target:
                break
            async with self.transaction():
                if version <= await self.schema_version():
                    continue  # another process got there first
                for statement in _split_sql(sql):
                    await self.conn.execute(statement)
                await self.conn.execute(f"PRAGMA user_version = {version}")
            applied.append(version)
        return applied

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction. BEGIN IMMEDIATE takes the write lock up front, so two processes
        never both read-then-write the same row and one of them fails late."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def fetchone(self, sql: str, params: tuple = ()) -> aiosqlite.Row | None:
        async with self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def fetchall(self, sql: str, params: tuple = ()) -> list[aiosqlite.Row]:
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())


def check_database_path(path: Path) -> None:
    """Refuse, with the reason, a path where the database cannot live; create its folder if needed."""
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise DatabaseOpenError(f"The database path {path} cannot be used ({exc.strerror or exc}).") from None
    if info is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseOpenError(f"The folder for the database {path} cannot be created ({exc.strerror or exc}): "
                                    "give a path in a folder you can write to.") from None
        try:
            path.open("ab").close()  # what SQLite would do first; here the reason can still be named
        except OSError as exc:
            raise DatabaseOpenError(f"The database {path} cannot be created ({exc.strerror or exc}): "
                                    "give a path in a folder you can write to.") from None
        return
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseOpenError(f"The database path {path} is a folder: give a file path, e.g. {path / 'guildtune.db'}.")
    if not stat.S_ISREG(info.st_mode):
        raise DatabaseOpenError(f"The database path {path} is not a regular file (a device or a pipe): give the path "
                                "of a file, e.g. ./data/guildtune.db.")
    try:
        with path.open("rb") as stream:
            header = stream.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise DatabaseOpenError(f"The database {path} cannot be read ({exc.strerror or exc}).") from None
    if header and header != SQLITE_HEADER[:len(header)]:
        raise DatabaseOpenError(f"{path} is not a SQLite database (it holds something else), so it was left as it is: "
                                "give the path of guildtune's database, or of a new file.")


def _unusable(path: str, exc: sqlite3.Error) -> str:
    reason = str(exc)
    if "readonly" in reason or "read-only" in reason:
        fix = "it is read-only: make it (and its folder) writable, or give another path"
    elif "not a database" in reason or "malformed" in reason:
        fix = "it is not a guildtune database, or it is damaged: give another path (keep this file for recovery)"
    elif "unable to open" in reason:
        fix = "the file cannot be created or opened there: give a path in a folder you can write to"
    else:
        fix = "give a path in a folder you can write to"
    return f"The database {path} cannot be used ({reason}): {fix}."


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (comments dropped; our migrations hold no ';' in strings)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
