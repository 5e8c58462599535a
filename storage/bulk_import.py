"""Large imports: all or nothing, without holding SQLite's write lock for long.

Writing 300k rows in one transaction kept every other writer (the bot recording an answer) waiting
past the 30 s busy timeout: `database is locked`. Here the rows are first staged in batches, each
its own short transaction, into `example_import_rows`, which no reader of `examples` sees; one
short transaction of two set-based statements then publishes them (the rows the guild does not
have yet, and their audit events). Other writers only ever wait for one batch or the
publish. A process that dies while staging leaves staged rows only; the next import deletes
them once their owner is dead (storage.ownership).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from storage.conversation import content_hash
from storage.ownership import Owner
from storage.records import Conversation

if TYPE_CHECKING:
    from storage.db import Database

#: Rows per staging transaction: a few milliseconds of lock each.
BATCH_ROWS = 2000
#: SQLite page cache for the importing connection while it imports (KiB): the unique index on
#: (guild, content hash) takes inserts in random order, which the default 2 MiB cache turns into
#: page re-reads inside the publish, the one transaction other writers wait for.
IMPORT_CACHE_KIB = 256 * 1024
#: Pause between staging batches, so another process's writer gets the lock in between (SQLite's
#: busy handler retries a waiting writer on its own schedule, not when the lock is released).
BATCH_PAUSE_S = 0.01
#: The audit event's `after` ({"status", "messages"}) built in SQL, in each engine's JSON functions.
_AUDIT_JSON_SQLITE = "json_object('status', status, 'messages', json(messages))"
_AUDIT_JSON_POSTGRES = "json_build_object('status', status, 'messages', messages::json)::text"


async def import_conversations(db: "Database", guild_id: int, conversations: list[Conversation], *,
                               source: str, author_id: int | None, status: str) -> tuple[int, int]:
    """Insert validated `conversations` (duplicates, in the file or already stored, skipped) as one
    atomic publish; returns (created, duplicates)."""
    await drop_abandoned(db)
    owner = Owner.this_process()
    async with db.transaction() as conn:
        row = await conn.fetchone(
            "INSERT INTO example_imports (guild_id, owner_host, owner_pid, owner_started, created_at)"
            " VALUES (?,?,?,?,?) RETURNING id", (guild_id, owner.host, owner.pid, owner.started, time.time()))
        import_id = row["id"]
    sqlite = db.engine.name == "sqlite"
    if sqlite:
        cache_kib = (await db.fetchone("PRAGMA cache_size"))[0]
        await db.engine.conn.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    try:
        await _stage(db, import_id, conversations)
        created = await _publish(db, import_id, guild_id, source=source, author_id=author_id, status=status)
    finally:
        if sqlite:
            await db.engine.conn.execute(f"PRAGMA cache_size = {int(cache_kib)}")
        await _drop(db, import_id)
    return created, len(conversations) - created


async def drop_abandoned(db: "Database") -> None:
    """Delete the staged rows of imports whose process died before publishing them."""
    rows = await db.fetchall("SELECT id, owner_host, owner_pid, owner_started FROM example_imports")
    for r in rows:
        if not Owner(r["owner_host"], r["owner_pid"], r["owner_started"]).is_alive():
            await _drop(db, r["id"])


async def _stage(db: "Database", import_id: int, conversations: list[Conversation]) -> None:
    seen: set[str] = set()
    batch: list[tuple[int, int, str, str]] = []
    for seq, clean in enumerate(conversations):
        digest = content_hash(clean)
        if digest in seen:
            continue  # a duplicate within the file: the first one is imported
        seen.add(digest)
        batch.append((import_id, seq, digest, json.dumps(clean, ensure_ascii=False)))
        if len(batch) == BATCH_ROWS:
            await _write_batch(db, batch)
            batch = []
    if batch:
        await _write_batch(db, batch)


async def _write_batch(db: "Database", batch: list[tuple[int, int, str, str]]) -> None:
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO example_import_rows (import_id, seq, content_hash, messages) VALUES (?,?,?,?)", batch)
    await asyncio.sleep(BATCH_PAUSE_S)


async def _publish(db: "Database", import_id: int, guild_id: int, *, source: str, author_id: int | None,
                   status: str) -> int:
    """One transaction of set-based statements: insert the staged rows the guild does not have yet,
    in file order, then their audit events. New rows are those above the largest id before the
    insert (both engines give each new row the next id, and the write lock keeps other inserts out)."""
    now = time.time()
    async with db.transaction() as conn:
        last_id = (await db.fetchone("SELECT COALESCE(MAX(id), 0) AS n FROM examples"))["n"]
        cur = await conn.execute(
            "INSERT INTO examples (guild_id, messages, source, source_message_ids, author_id, status, content_hash,"
            " created_at, updated_at) SELECT ?, s.messages, ?, '[]', ?, ?, s.content_hash, ?, ?"
            " FROM example_import_rows s WHERE s.import_id=? AND NOT EXISTS"
            " (SELECT 1 FROM examples e WHERE e.guild_id=? AND e.content_hash=s.content_hash) ORDER BY s.seq",
            (guild_id, source, author_id, status, now, now, import_id, guild_id))
        created = cur.rowcount
        after = (_AUDIT_JSON_SQLITE if db.engine.name == "sqlite" else _AUDIT_JSON_POSTGRES)
        await conn.execute(
            "INSERT INTO example_events (guild_id, example_id, actor_id, action, after, created_at)"
            f" SELECT guild_id, id, ?, 'created', {after}, ? FROM examples WHERE id > ? ORDER BY id",
            (author_id, now, last_id))
    return created


async def _drop(db: "Database", import_id: int) -> None:
    """Delete an import's staged rows in batches (short transactions again), then the import."""
    while True:
        async with db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM example_import_rows WHERE import_id=? AND seq IN (SELECT seq FROM example_import_rows"
                " WHERE import_id=? ORDER BY seq LIMIT ?)", (import_id, import_id, BATCH_ROWS * 5))
        if cur.rowcount == 0:
            break
        await asyncio.sleep(BATCH_PAUSE_S)
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM example_imports WHERE id=?", (import_id,))
