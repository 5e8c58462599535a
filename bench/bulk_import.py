"""Bulk-import benchmark: how long another process's writes wait while a large import runs.

A separate writer process (standing in for the bot: one small INSERT every 20 ms, SQLite's 30 s
busy timeout, as storage.db sets it) runs beside each import, and reports its slowest write and
how many writes failed with `database is locked`. Two imports of the same rows, each into a
fresh database, in the same run:
- baseline: every row inserted inside one write transaction (the import as it was before
  storage/bulk_import.py: `ExampleRepository._insert` per row under one BEGIN IMMEDIATE);
- staged: `db.examples.add_many` (rows staged in short transactions, then published at once).

Usage: .venv/bin/python bench/bulk_import.py [--rows 300000] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WRITER = r"""
import json, sqlite3, sys, time
from pathlib import Path
db, stop, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
waits, locked = [], 0
while not stop.exists():
    t0 = time.perf_counter()
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO answers (guild_id, question, answer, latency_ms, created_at)"
                     " VALUES (2, 'q', 'a', 1, ?)", (time.time(),))
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        locked += 1
    waits.append(time.perf_counter() - t0)
    time.sleep(0.02)
json.dump({"writes": len(waits), "max_wait_s": max(waits, default=0.0), "locked": locked,
           "p99_wait_s": sorted(waits)[int(len(waits) * 0.99)] if waits else 0.0}, open(out, "w"))
"""


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Question {i}: when does the raid of week {i % 52} start, and who leads it?"},
             {"role": "assistant", "content": f"Answer {i}: the raid starts at nine on Friday; "
                                              f"leader number {i % 17} brings the potions and snacks. " * 2}]
            for i in range(n)]


async def one_transaction(db, guild_id: int, rows) -> None:
    """The baseline: what add_many did before, every row under one write lock."""
    from storage.conversation import content_hash, validate_conversation

    cleaned = [validate_conversation(c) for c in rows]
    async with db.transaction() as conn:
        for clean in cleaned:
            await db.examples._insert(conn, guild_id, clean, content_hash(clean), "import", None, [], "pending", None)


async def staged(db, guild_id: int, rows) -> None:
    await db.examples.add_many(guild_id, rows, source="import", author_id=None)


async def measure(name: str, importer, rows, folder: Path) -> dict:
    from storage.db import Database

    path = folder / f"{name}.db"
    db = await Database.open(path)
    stop, out = folder / f"{name}.stop", folder / f"{name}.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop), str(out)])
    await asyncio.sleep(0.5)  # the writer is writing before the import starts
    t0 = time.perf_counter()
    await importer(db, 1, rows)
    import_s = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    stop.touch()
    writer.wait(60)
    count = (await db.fetchone("SELECT COUNT(*) AS n FROM examples"))["n"]
    await db.close()
    result = {"import": name, "rows": count, "import_s": round(import_s, 2), **json.loads(out.read_text())}
    print(f"{name:>16}: {count} rows in {import_s:.1f}s; other writer: {result['writes']} writes, "
          f"slowest {result['max_wait_s']:.2f}s, p99 {result['p99_wait_s']:.3f}s, "
          f"'database is locked' {result['locked']}x", flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = conversations(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = await measure("one transaction", one_transaction, rows, Path(tmp))
        new = await measure("staged", staged, rows, Path(tmp))
    ratio = baseline["max_wait_s"] / max(new["max_wait_s"], 1e-6)
    print(f"slowest write of the other process: {new['max_wait_s']:.2f}s staged vs "
          f"{baseline['max_wait_s']:.2f}s in one transaction ({ratio:.0f}x shorter); "
          f"import time {new['import_s']:.1f}s vs {baseline['import_s']:.1f}s "
          f"({new['import_s'] / baseline['import_s']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "baseline": baseline, "staged": new,
                                         "max_wait_ratio": ratio}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
