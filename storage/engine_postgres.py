"""PostgreSQL through asyncpg: a connection pool per process, an advisory lock per write transaction.

Why asyncpg rather than psycopg 3: see storage/engine.py.
"""
from __future__ import annotations

import asyncio
import contextvars
from contextlib import asynccontextmanager
from typing import AsyncIterator

from storage.engine import BUSY_TIMEOUT_MS, Column, DatabaseUnavailable, Engine, Result, Session
from storage.engine_sql import numbered_placeholders, postgres_ddl
from storage.engine_target import DatabaseTarget

#: A transaction that sits idle this long is ended by the server, so a host that died mid-way
#: cannot hold the write lock for good.
IDLE_IN_TRANSACTION_MS = 60_000
#: Key of the advisory lock every write transaction holds (what BEGIN IMMEDIATE is to SQLite).
WRITE_LOCK_KEY = 0x6775696C64  # "guild"
PG_SCHEMA_TABLE = "guildtune_schema_version"
POOL_SIZE = 10


def _rowcount(status: str) -> int:
    """Rows touched, from PostgreSQL's command tag ('UPDATE 3', 'INSERT 0 1')."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


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
        try:
            import asyncpg
        except ImportError:
            raise DatabaseUnavailable(f"GUILDTUNE_DB names PostgreSQL ({target}) but its driver, asyncpg, is not "
                                      "installed: run `pip install asyncpg` in guildtune's environment "
                                      "(or `make setup`).") from None
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
