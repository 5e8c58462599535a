"""The two database engines behind `Database`: embedded SQLite (the default) and PostgreSQL.

`GUILDTUNE_DB` chooses: a file path or `sqlite:///path` is SQLite; `postgresql://…` is a PostgreSQL
server that a bot and a trainer on different hosts share. The repositories keep one SQL text,
written in what both engines accept (`?` placeholders, `RETURNING`, `INSERT … ON CONFLICT … DO`);
this module adapts the rest, each difference in one place:

- placeholders and migration types: storage/engine_sql.py (one numbered migration series, in
  SQLite's DDL, that PostgreSQL runs with its own type names of the same width);
- transactions: SQLite's `BEGIN IMMEDIATE` takes the one write lock up front, and the repositories
  rely on that (read, check, then write, as in two moderators deciding one example). PostgreSQL
  gets the same contract from a transaction-scoped advisory lock taken first in every write
  transaction: writers queue across processes and hosts, readers never wait, no retry loops;
- the schema version: `PRAGMA user_version` in SQLite, a one-row table in PostgreSQL;
- rows: both drivers' rows answer `row["column"]` and `row[0]`, so repositories read them alike.

Which engine a GUILDTUNE_DB value names: storage/engine_target.py. The engines themselves:
storage/engine_sqlite.py and storage/engine_postgres.py.

Driver: asyncpg, not psycopg 3. It is asyncio-native with its own pool in the same package (psycopg
needs psycopg_pool beside it and libpq, bundled only by its binary extra), its `$n` placeholders
leave `%` in SQL alone (psycopg's `%s` would make every literal `%` an escape to remember), and its
`copy_records_to_table` makes `guildtune db copy` one COPY per table.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Sequence

from storage.engine_target import DatabaseTarget

#: How long a writer waits for the write lock before giving up (SQLite's busy timeout, PostgreSQL's lock_timeout).
BUSY_TIMEOUT_MS = 30_000


class DatabaseUnavailable(RuntimeError):
    """The database server cannot be reached or refused us; the message says which and what to check."""


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


async def connect(target: DatabaseTarget) -> Engine:
    if target.engine == "postgresql":
        from storage.engine_postgres import PostgresEngine

        return await PostgresEngine.connect(target)
    from storage.engine_sqlite import SqliteEngine

    return await SqliteEngine.connect(target)
