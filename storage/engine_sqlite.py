"""The embedded engine: one aiosqlite connection per process, WAL, `BEGIN IMMEDIATE` writes."""
from __future__ import annotations

import asyncio
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiosqlite

from storage.engine import BUSY_TIMEOUT_MS, Column, DatabaseUnavailable, Engine, Result, Session
from storage.engine_target import DatabaseTarget
from storage.sqlite_path import DatabaseOpenError, check_database_path, unusable

MIN_SQLITE = (3, 35, 0)  # RETURNING


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


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, target: DatabaseTarget, conn: aiosqlite.Connection):
        super().__init__(target)
        self.conn = conn
        self.session = SqliteSession(conn)

    @classmethod
    async def connect(cls, target: DatabaseTarget) -> "SqliteEngine":
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise DatabaseUnavailable(
                f"this Python's SQLite is {sqlite3.sqlite_version}; guildtune needs 3.35 or newer "
                "(RETURNING). Use a newer Python build, or PostgreSQL through GUILDTUNE_DB=postgresql://…")
        if target.location != ":memory:":
            check_database_path(Path(target.location))
        try:
            conn = await aiosqlite.connect(target.location, isolation_level=None)
        except sqlite3.Error as exc:
            await asyncio.sleep(0.1)  # aiosqlite stops its thread itself: let it finish while the loop runs
            raise DatabaseOpenError(unusable(target.location, exc)) from None
        try:  # the connection's thread must be closed on any failure, or the process never exits
            conn.row_factory = aiosqlite.Row
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise DatabaseOpenError(unusable(target.location, exc)) from None
            raise
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
