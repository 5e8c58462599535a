"""Copying a whole database from one engine to another (`guildtune db copy`), for a server that
outgrows SQLite and moves to PostgreSQL (or back).

Both sides are opened through `Database.open`, so both are migrated to the same schema first.
Every application table is copied with its ids, parents before children, from one consistent
snapshot of the source into ONE transaction on the target: either the whole copy lands, its
row counts checked against the source's per table and the id sequences moved past the largest id,
or the target is left as it was. A target that already holds rows is refused unless `replace`.
Stop the bot and the trainer first; rows they write during the copy are not in it.
"""
from __future__ import annotations

from pathlib import Path

from storage.db import Database
from storage.engine import Engine, Session
from storage.engine_target import parse_target

BATCH_ROWS = 1000


class CopyError(Exception):
    """Why nothing was copied (the target is unchanged), with what to do about it."""


async def copy_database(source: str | Path, target: str | Path, *, replace: bool = False) -> dict[str, int]:
    """Copy every table from `source` to `target`; returns rows copied per table (verified)."""
    if _same_place(source, target):
        raise CopyError("--from and --to name the same database; give the new database as --to.")
    src = await Database.open(source)
    try:
        dst = await Database.open(target)
        try:
            return await _copy(src, dst, replace)
        finally:
            await dst.close()
    finally:
        await src.close()


def _same_place(a: str | Path, b: str | Path) -> bool:
    ta, tb = parse_target(a), parse_target(b)
    if ta.engine != tb.engine:
        return False
    if ta.engine == "sqlite":
        return ta.location != ":memory:" and Path(ta.location).resolve() == Path(tb.location).resolve()
    return ta.location == tb.location


async def _copy(src: Database, dst: Database, replace: bool) -> dict[str, int]:
    tables = await src.engine.tables()
    if tables != await dst.engine.tables():
        raise CopyError(f"the two databases have different tables ({', '.join(tables)} against "
                        f"{', '.join(await dst.engine.tables())}); run the same guildtune version on both.")
    columns = {}
    for table in tables:
        names = [c.name for c in await src.engine.columns(table)]
        if sorted(names) != sorted(c.name for c in await dst.engine.columns(table)):
            raise CopyError(f"table {table} has different columns in the two databases; "
                            "run the same guildtune version on both.")
        columns[table] = names
    order = await dependency_order(dst.engine, tables)
    async with src.engine.snapshot() as reader, dst.transaction() as writer:
        present = {t: n for t in tables if (n := await _count(writer, t))}
        if present and not replace:
            listing = ", ".join(f"{t} ({n})" for t, n in present.items())
            raise CopyError(f"the target database is not empty: {listing}. Copy into an empty database, "
                            "or pass --replace to delete those rows first.")
        for table in reversed(order):
            await writer.execute(f"DELETE FROM {_quoted(table)}")
        copied = {}
        for table in order:
            names = columns[table]
            select = f"SELECT {', '.join(_quoted(n) for n in names)} FROM {_quoted(table)}"
            try:
                async for rows in reader.stream(select, BATCH_ROWS):
                    await writer.insert_rows(table, names, rows)
            except Exception as exc:  # the driver's own words name the row; the transaction rolls back
                detail = " ".join(str(exc).split()).rstrip(".")
                raise CopyError(f"copying table {table} failed: {detail}. Nothing was copied.") from None
            await dst.engine.advance_ids(writer, table)
            expected, got = await _count(reader, table), await _count(writer, table)
            if got != expected:
                raise CopyError(f"table {table}: {got} rows arrived of {expected}. Nothing was copied.")
            copied[table] = got
    return copied


async def dependency_order(engine: Engine, tables: list[str]) -> list[str]:
    """Tables with every table they reference before them (foreign keys hold on each insert)."""
    known = set(tables)
    pending = {t: ((await engine.references(t)) & known) - {t} for t in tables}
    order: list[str] = []
    while pending:
        ready = sorted(t for t, refs in pending.items() if not refs - set(order))
        if not ready:
            raise CopyError(f"the tables {', '.join(sorted(pending))} reference each other in a cycle; "
                            "they cannot be copied in order.")
        order.extend(ready)
        for t in ready:
            del pending[t]
    return order


async def _count(session: Session, table: str) -> int:
    return int((await session.fetchone(f"SELECT COUNT(*) FROM {_quoted(table)}"))[0])


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
