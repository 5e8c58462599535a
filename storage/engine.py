"""The two database engines behind `Database`: embedded SQLite (the default) and PostgreSQL.

`GUILDTUNE_DB` chooses: a file path or `sqlite:///path` is SQLite; `postgresql://…` is a PostgreSQL
server that a bot and a trainer on different hosts share. The repositories keep one SQL text,
written in what both engines accept (`?` placeholders, `RETURNING`, `INSERT … ON CONFLICT … DO`);
this module adapts the rest, each difference in one place:

- placeholders: `?` becomes `$1, $2, …` for PostgreSQL (outside quotes and comments);
- migrations: one numbered series in SQLite's DDL; for PostgreSQL `INTEGER` becomes `BIGINT`
  (SQLite integers are 64-bit and Discord ids need all of them), `REAL` becomes `DOUBLE PRECISION`
  (PostgreSQL's REAL is 4 bytes: a timestamp would lose minutes) and `id INTEGER PRIMARY KEY` an
  identity column (what SQLite's rowid alias is);
- transactions: SQLite's `BEGIN IMMEDIATE` takes the one write lock up front, and the repositories
  rely on that (read, check, then write, as in two moderators deciding one example). PostgreSQL
  gets the same contract from a transaction-scoped advisory lock taken first in every write
  transaction: writers queue across processes and hosts, readers never wait, no retry loops;
- the schema version: `PRAGMA user_version` in SQLite, a one-row table in PostgreSQL;
- rows: both drivers' rows answer `row["column"]` and `row[0]`, so repositories read them alike.

Driver: asyncpg, not psycopg 3. It is asyncio-native with its own pool in the same package (psycopg
needs psycopg_pool beside it and libpq, bundled only by its binary extra), its `$n` placeholders
leave `%` in SQL alone (psycopg's `%s` would make every literal `%` an escape to remember), and its
`copy_records_to_table` makes `guildtune db copy` one COPY per table.
"""
from __future__ import annotations

import asyncio
import contextvars
import re
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiosqlite

BUSY_TIMEOUT_MS = 30_000
#: A transaction that sits idle this long is ended by the server, so a host that died mid-way
#: cannot hold the write lock for good.
IDLE_IN_TRANSACTION_MS = 60_000
#: Key of the advisory lock every PostgreSQL write transaction holds (the BEGIN IMMEDIATE of it).
WRITE_LOCK_KEY = 0x6775696C64  # "guild"
PG_SCHEMA_TABLE = "guildtune_schema_version"
MIN_SQLITE = (3, 35, 0)  # RETURNING
POOL_SIZE = 10

SQLITE_SCHEMES = ("sqlite://",)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
ALLOWED = ("a SQLite file path (data/guildtune.db), sqlite:///relative/path.db, sqlite:////absolute/path.db "
           "or postgresql://user:password@host:5432/database")


class DatabaseTargetError(ValueError):
    """GUILDTUNE_DB (or a --from/--to) names no database this program can open."""


class DatabaseUnavailable(RuntimeError):
    """The database server cannot be reached or refused us; the message says which and what to check."""


@dataclass(frozen=True)
class DatabaseTarget:
    engine: str     # "sqlite" | "postgresql"
    location: str   # the SQLite file (or ":memory:"), or the PostgreSQL URL with its password

    def __str__(self) -> str:
        return redact(self.location)


def parse_target(value: str | Path) -> DatabaseTarget:
    """Which engine and where, from a GUILDTUNE_DB value; a clear error for anything else."""
    text = str(value).strip()
    if not text:
        raise DatabaseTargetError(f"no database given: use {ALLOWED}.")
    lowered = text.lower()
    if lowered.startswith(POSTGRES_SCHEMES):
        try:
            urlsplit(text).port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise DatabaseTargetError(f"{redact(text)} has a port that is not a number: use {ALLOWED}.") from None
        return DatabaseTarget("postgresql", text)
    if lowered.startswith(SQLITE_SCHEMES):
        rest = text[len("sqlite://"):]
        if not rest.startswith("/") or len(rest) < 2:
            raise DatabaseTargetError(f"{text!r} is not a SQLite URL: use {ALLOWED}.")
        return DatabaseTarget("sqlite", rest[1:])  # sqlite:///rel → rel, sqlite:////abs → /abs
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise DatabaseTargetError(f"{scheme}:// databases are not supported: use {ALLOWED}.")
    return DatabaseTarget("sqlite", text)


def redact(location: str) -> str:
    """The location with any password replaced by ***, for messages and logs."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ---------------------------------------------------------------- SQL text

def _segments(sql: str) -> Iterable[tuple[bool, str]]:
    """(is_code, text) pieces of `sql`: quoted strings, quoted names and comments are not code.
    One pass, no backtracking."""
    i, start, n = 0, 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = sql.find(ch, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == ch:  # '' and "" escape themselves
                end = sql.find(ch, end + 2)
            end = n if end == -1 else end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
        else:
            i += 1
            continue
        if start < i:
            yield True, sql[start:i]
        yield False, sql[i:end]
        i = start = end
    if start < n:
        yield True, sql[start:]


@lru_cache(maxsize=1024)
def numbered_placeholders(sql: str) -> str:
    """`?` → `$1`, `$2`, … (PostgreSQL's parameters), leaving quoted text alone."""
    counter = 0
    out = []
    for is_code, text in _segments(sql):
        if is_code and "?" in text:
            pieces = text.split("?")
            rebuilt = [pieces[0]]
            for piece in pieces[1:]:
                counter += 1
                rebuilt.append(f"${counter}{piece}")
            text = "".join(rebuilt)
        out.append(text)
    return "".join(out)


_PG_TYPES = [
    (re.compile(r"\bid\s+INTEGER\s+PRIMARY\s+KEY\b"), "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
]


def postgres_ddl(statement: str) -> str:
    """A migration statement written for SQLite, with PostgreSQL's types of the same width."""
    out = []
    for is_code, text in _segments(statement):
        if is_code:
            for pattern, replacement in _PG_TYPES:
                text = pattern.sub(replacement, text)
        out.append(text)
    return "".join(out)


def _rowcount(status: str) -> int:
    """Rows touched, from PostgreSQL's command tag ('UPDATE 3', 'INSERT 0 1')."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


@dataclass(frozen=True)
class Result:
    rowcount: int

    @property
    def lastrowid(self) -> int:
        raise AttributeError("PostgreSQL has no lastrowid: write `INSERT … RETURNING id` and read the id "
                             "with `fetchone` (both engines support it)")


@dataclass(frozen=True)
class Column:
    name: str
    type: str       # as the engine reports it (INTEGER / bigint, ...)
    notnull: bool
    identity: bool  # filled by the database when left out (SQLite's rowid alias, PostgreSQL identity)


# ---------------------------------------------------------------- sessions

class Session(ABC):
    """What a transaction hands the repositories: statements on the transaction's connection."""

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    @abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def stream(self, sql: str, batch: int = 1000) -> AsyncIterator[list[tuple]]:
        """The rows of a query in batches (for copying whole tables without holding them)."""

    @abstractmethod
    async def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


class SqliteSession(Session):
    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn

    async def execute(self, sql, params=()):
        cur = await self.conn.execute(sql, tuple(params))
        try:
            return Result(cur.rowcount)
        finally:
            await cur.close()

    async def fetchone(self, sql, params=()):
        async with self.conn.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def executemany(self, sql, rows):
        await self.conn.executemany(sql, [tuple(r) for r in rows])

    async def fetchall(self, sql, params=()):
        async with self.conn.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def stream(self, sql, batch=1000):
        async with self.conn.execute(sql) as cur:
            while rows := await cur.fetchmany(batch):
                yield [tuple(r) for r in rows]

    async def insert_rows(self, table, columns, rows):
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        await self.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)


class PostgresSession(Session):
    def __init__(self, conn):
        self.conn = conn

    async def execute(self, sql, params=()):
        if params:
            status = await self.conn.execute(numbered_placeholders(sql), *params)
        else:  # no parameters: the simple protocol, which also runs several statements
            status = await self.conn.execute(sql)
        return Result(_rowcount(status))

    async def fetchone(self, sql, params=()):
        return await self.conn.fetchrow(numbered_placeholders(sql), *params)

    async def executemany(self, sql, rows):
        await self.conn.executemany(numbered_placeholders(sql), [tuple(r) for r in rows])

    async def fetchall(self, sql, params=()):
        return list(await self.conn.fetch(numbered_placeholders(sql), *params))

    async def stream(self, sql, batch=1000):
        rows: list[tuple] = []
        async for record in self.conn.cursor(sql, prefetch=batch):
            rows.append(tuple(record))
            if len(rows) == batch:
                yield rows
                rows = []
        if rows:
            yield rows

    async def insert_rows(self, table, columns, rows):
        await self.conn.copy_records_to_table(table, records=[tuple(r) for r in rows], columns=list(columns))


# ---------------------------------------------------------------- engines

class Engine(ABC):
    name: str

    def __init__(self, target: DatabaseTarget):
        self.target = target
        self._write_lock = asyncio.Lock()  # one write transaction at a time per process

    @abstractmethod
    def transaction(self) -> Any:
        """Async context manager: a write transaction, serialised with every other writer."""

    @abstractmethod
    def snapshot(self) -> Any:
        """Async context manager: a read-only transaction that sees one consistent state."""

    @abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    @abstractmethod
    async def schema_version(self) -> int: ...

    @abstractmethod
    async def set_schema_version(self, session: Session, version: int) -> None: ...

    @abstractmethod
    def ddl(self, statement: str) -> str:
        """A migration statement as this engine must run it."""

    @abstractmethod
    async def tables(self) -> list[str]:
        """The application's tables (not the engine's own bookkeeping)."""

    @abstractmethod
    async def columns(self, table: str) -> list[Column]: ...

    @abstractmethod
    async def references(self, table: str) -> set[str]:
        """Tables this table's foreign keys point at."""

    @abstractmethod
    async def advance_ids(self, session: Session, table: str) -> None:
        """After rows were written with their ids, make the next generated id follow the largest."""

    @abstractmethod
    async def close(self) -> None: ...


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, target: DatabaseTarget, conn: aiosqlite.Connection):
        super().__init__(target)
        self.conn = conn
        self.session = SqliteSession(conn)

    @classmethod
    async def connect(cls, target: DatabaseTarget) -> "SqliteEngine":
        import sqlite3

        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise DatabaseUnavailable(
                f"this Python's SQLite is {sqlite3.sqlite_version}; guildtune needs 3.35 or newer "
                "(RETURNING). Use a newer Python build, or PostgreSQL through GUILDTUNE_DB=postgresql://…")
        if target.location != ":memory:":
            Path(target.location).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(target.location, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA synchronous = NORMAL")
        return cls(target, conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """BEGIN IMMEDIATE takes the write lock up front, so two processes never both
        read-then-write the same row and one of them fails late."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.session
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Session]:
        async with self._write_lock:  # nothing of ours may write into this connection meanwhile
            await self.conn.execute("BEGIN")
            try:
                yield self.session
            finally:
                await self.conn.execute("ROLLBACK")

    async def fetchone(self, sql, params=()):
        return await self.session.fetchone(sql, params)

    async def fetchall(self, sql, params=()):
        return await self.session.fetchall(sql, params)

    async def schema_version(self) -> int:
        return int((await self.fetchone("PRAGMA user_version"))[0])

    async def set_schema_version(self, session, version):
        await session.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement):
        return statement

    async def tables(self):
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        return [r[0] for r in rows]

    async def columns(self, table):
        rows = await self.fetchall(f'PRAGMA table_info("{table}")')
        pk = [r["name"] for r in rows if r["pk"]]
        return [Column(r["name"], r["type"], bool(r["notnull"]) or bool(r["pk"]),
                       len(pk) == 1 and r["pk"] == 1 and r["type"].upper() == "INTEGER") for r in rows]

    async def references(self, table):
        rows = await self.fetchall(f'PRAGMA foreign_key_list("{table}")')
        return {r["table"] for r in rows}

    async def advance_ids(self, session, table):
        return None  # a rowid alias always continues after the largest id in the table

    async def close(self):
        await self.conn.close()


class PostgresEngine(Engine):
    name = "postgresql"

    def __init__(self, target: DatabaseTarget, pool):
        super().__init__(target)
        self.pool = pool
        # The session of the transaction this task is inside, so that `db.fetchone` there reads
        # the transaction's own writes, as it does on SQLite's single connection.
        self._current: contextvars.ContextVar[PostgresSession | None] = contextvars.ContextVar(
            f"guildtune-pg-{id(self)}", default=None)

    @classmethod
    async def connect(cls, target: DatabaseTarget) -> "PostgresEngine":
        import asyncpg

        try:
            pool = await asyncpg.create_pool(
                target.location, min_size=1, max_size=POOL_SIZE, timeout=15,
                server_settings={"application_name": "guildtune", "lock_timeout": str(BUSY_TIMEOUT_MS),
                                 "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)})
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc).replace(target.location, str(target)) or type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot open the PostgreSQL database {target}: {reason}. Check GUILDTUNE_DB (host, port, "
                "user, password, database name) and that the server accepts connections from this host."
            ) from None
        engine = cls(target, pool)
        async with engine.transaction() as session:  # under the write lock: two first starts cannot race
            await session.execute(f"CREATE TABLE IF NOT EXISTS {PG_SCHEMA_TABLE} (version INTEGER NOT NULL)")
            await session.execute(f"INSERT INTO {PG_SCHEMA_TABLE} (version) SELECT 0 WHERE NOT EXISTS "
                                  f"(SELECT 1 FROM {PG_SCHEMA_TABLE})")
        return engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self._write_lock, self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_KEY)
            session = PostgresSession(conn)
            token = self._current.set(session)
            try:
                yield session
            finally:
                self._current.reset(token)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Session]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield PostgresSession(conn)

    async def fetchone(self, sql, params=()):
        session = self._current.get()
        if session is not None:
            return await session.fetchone(sql, params)
        return await self.pool.fetchrow(numbered_placeholders(sql), *params)

    async def fetchall(self, sql, params=()):
        session = self._current.get()
        if session is not None:
            return await session.fetchall(sql, params)
        return list(await self.pool.fetch(numbered_placeholders(sql), *params))

    async def schema_version(self) -> int:
        return int((await self.fetchone(f"SELECT version FROM {PG_SCHEMA_TABLE}"))[0])

    async def set_schema_version(self, session, version):
        await session.execute(f"UPDATE {PG_SCHEMA_TABLE} SET version=?", (int(version),))

    def ddl(self, statement):
        return postgres_ddl(statement)

    async def tables(self):
        rows = await self.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE' AND table_name <> ? ORDER BY table_name", (PG_SCHEMA_TABLE,))
        return [r[0] for r in rows]

    async def columns(self, table):
        rows = await self.fetchall(
            "SELECT column_name, data_type, is_nullable, is_identity FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))
        return [Column(r[0], r[1], r[2] == "NO", r[3] == "YES") for r in rows]

    async def references(self, table):
        rows = await self.fetchall(
            "SELECT DISTINCT confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = ?::regclass", (table,))
        return {r[0].strip('"') for r in rows}

    async def advance_ids(self, session, table):
        for column in await self.columns(table):
            if column.identity:
                await session.execute(
                    f'SELECT setval(pg_get_serial_sequence(?, ?), MAX("{column.name}")) FROM "{table}" '
                    f'HAVING MAX("{column.name}") IS NOT NULL', (table, column.name))

    async def close(self):
        await self.pool.close()


async def connect(target: DatabaseTarget) -> Engine:
    if target.engine == "postgresql":
        return await PostgresEngine.connect(target)
    return await SqliteEngine.connect(target)
