"""Large imports (storage.bulk_import): staged in short transactions, published all at once.

Readers and other writers keep going while an import is staged; they see none of its rows until
they all appear; a failure or a dead importer leaves no row of it behind."""
import asyncio

import pytest

import storage.bulk_import as bulk_import
from storage.db import Database
from storage.ownership import Owner


def conv(q: str, a: str = "answer") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture
async def db(tmp_path):
    database = await Database.open(tmp_path / "g.db")
    yield database
    await database.close()


async def staged_rows(db) -> int:
    return (await db.fetchone("SELECT COUNT(*) AS n FROM example_import_rows"))["n"]


async def test_import_in_batches_dedups_orders_and_audits(db, monkeypatch):
    monkeypatch.setattr(bulk_import, "BATCH_ROWS", 7)
    await db.examples.add(1, conv("q3", "ünïcode 3"), source="teach", author_id=5)  # stored: a duplicate
    await db.examples.add(2, conv("q4", "ünïcode 4"), source="teach", author_id=5)  # another guild's: not a duplicate
    rows = [conv(f"q{i}", f"ünïcode {i}") for i in range(30)] + [conv("q10", "ünïcode 10")]
    result = await db.examples.add_many(1, rows, source="import", author_id=None, status="approved")
    assert (result.created, result.duplicates) == (29, 2)  # q3 is stored, q10 is in the file twice
    imported = [e for e in await db.examples.list(1) if e.source == "import"]
    assert len(imported) == result.created
    assert [e.messages[0]["content"] for e in sorted(imported, key=lambda e: e.id)] == \
        [f"q{i}" for i in range(30) if i != 3]  # file order, the stored duplicate skipped
    assert all(e.status == "approved" and e.source_message_ids == [] for e in imported)
    event = (await db.examples.events(1, imported[0].id))[0]
    assert event.action == "created" and event.after == {"status": "approved", "messages": imported[0].messages}
    assert await staged_rows(db) == 0
    assert (await db.fetchone("SELECT COUNT(*) AS n FROM example_imports"))["n"] == 0


async def test_other_writers_go_on_and_readers_see_all_or_nothing(tmp_path, monkeypatch):
    """A second connection (as another process has) writes while the import is staged, and every
    look at the guild finds either none or all of the imported rows."""
    monkeypatch.setattr(bulk_import, "BATCH_ROWS", 50)
    importer = await Database.open(tmp_path / "g.db")
    bot = await Database.open(tmp_path / "g.db")
    n = 3000
    try:
        task = asyncio.create_task(importer.examples.add_many(
            1, [conv(f"import {i}") for i in range(n)], source="import", author_id=None))
        seen, bot_writes = set(), 0
        while not task.done():
            count = (await bot.fetchone("SELECT COUNT(*) AS n FROM examples WHERE guild_id=1 AND source='import'"))["n"]
            seen.add(count)
            staging = await staged_rows(bot)
            if count == 0 and staging:
                await bot.examples.add(1, conv(f"taught while importing {bot_writes}"), source="teach", author_id=7)
                bot_writes += 1
            await asyncio.sleep(0)
        assert (await task).created == n
        assert seen <= {0, n}, f"a reader saw part of the import: {sorted(seen)}"
        assert bot_writes >= 2, "the other writer never got to write while the import was staged"
        assert len(await bot.examples.list(1)) == n + bot_writes
    finally:
        await importer.close()
        await bot.close()


async def test_a_failed_publish_leaves_nothing(db, monkeypatch):
    monkeypatch.setattr(bulk_import, "BATCH_ROWS", 10)

    async def broken_publish(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bulk_import, "_publish", broken_publish)
    with pytest.raises(RuntimeError, match="disk full"):
        await db.examples.add_many(1, [conv(f"q{i}") for i in range(45)], source="import", author_id=None)
    assert await db.examples.list(1) == [] and await staged_rows(db) == 0


async def test_rows_staged_by_a_dead_importer_are_dropped_by_the_next_import(db):
    me = Owner.this_process()
    async with db.transaction() as conn:
        for owner in (Owner(me.host, me.pid, me.started - 3600), me):  # a dead one, and a live one
            row = await conn.fetchone(
                "INSERT INTO example_imports (guild_id, owner_host, owner_pid, owner_started, created_at)"
                " VALUES (1, ?, ?, ?, 0) RETURNING id", (owner.host, owner.pid, owner.started))
            await conn.execute("INSERT INTO example_import_rows (import_id, seq, content_hash, messages)"
                               " VALUES (?, 0, 'h', '[]')", (row["id"],))
    live_import = row["id"]
    result = await db.examples.add_many(1, [conv("fresh")], source="import", author_id=None)
    assert result.created == 1
    left = await db.fetchall("SELECT import_id FROM example_import_rows")
    assert [r["import_id"] for r in left] == [live_import]  # a live importer's rows are not touched
