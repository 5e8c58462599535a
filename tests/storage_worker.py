"""A separate process working on a shared database, as a trainer on another host would.

    python tests/storage_worker.py claim DB_URL READY_FILE GO_FILE
        open the database, say ready, wait for the go, then claim queued runs until none is left;
        prints the claimed run ids as JSON.
    python tests/storage_worker.py publish DB_URL GUILD ADAPTER_PATH
        create a version for GUILD and flip its active pointer (the trainer's hot swap); prints its id.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.db import Database  # noqa: E402


async def claim(url: str, ready: Path, go: Path) -> list[int]:
    db = await Database.open(url)
    try:
        ready.touch()
        deadline = time.monotonic() + 60
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go signal within 60 s")
            await asyncio.sleep(0.005)
        taken = []
        while (run := await db.runs.claim_next()) is not None:
            taken.append(run.id)
            await asyncio.sleep(0.002)  # the work a daemon would start here; lets the other claimer in
        return taken
    finally:
        await db.close()


async def publish(url: str, guild: int, adapter: str) -> int:
    db = await Database.open(url)
    try:
        version = await db.versions.create(guild, run_id=None, adapter_path=adapter, base_model="base",
                                           metrics={}, n_examples=1)
        await db.versions.activate(guild, version.id)
        return version.id
    finally:
        await db.close()


def main(argv: list[str]) -> None:
    if argv[0] == "claim":
        print(json.dumps(asyncio.run(claim(argv[1], Path(argv[2]), Path(argv[3])))))
    elif argv[0] == "publish":
        print(json.dumps(asyncio.run(publish(argv[1], int(argv[2]), argv[3]))))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
