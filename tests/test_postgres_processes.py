"""Bot and trainers as separate processes on one database (PostgreSQL for separate hosts, SQLite
on one): two claim loops never take one run twice, and the bot's tracker follows a pointer that
another process flips."""
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from serving.version_tracker import ActiveVersionTracker
from storage.db import Database

WORKER = Path(__file__).with_name("storage_worker.py")
RUNS = 60


async def test_two_trainer_processes_never_claim_one_run_twice(db_url, tmp_path):
    db = await Database.open(db_url)
    queued = [(await db.runs.enqueue(guild, trigger="schedule"))[0].id for guild in range(1, RUNS + 1)]
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, str(WORKER), "claim", db_url, str(ready), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ready in readies]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies):  # both connected: start them at the same moment
            assert time.monotonic() < deadline, [w.stderr.read() for w in workers if w.poll() is not None]
            await asyncio.sleep(0.02)
        go.touch()
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert not set(first) & set(second), "a run was claimed by both trainers"
    assert sorted(first + second) == queued, "every queued run is claimed exactly once"
    assert first and second, "both trainers got work (they really ran side by side)"
    runs = [await db.runs.get(guild, run_id) for guild, run_id in enumerate(queued, 1)]
    assert {r.status for r in runs} == {"running"} and all(r.started_at for r in runs)
    assert await db.runs.claim_next() is None
    await db.close()


class RecordingServer:
    """The model server the bot would load versions into; records what it was asked to load."""

    def __init__(self):
        self.loaded: list[int] = []

    async def publish(self, version):
        return f"tag-{version.id}"

    async def preload(self, version):
        self.loaded.append(version.id)


async def test_bot_tracker_follows_a_flip_made_by_another_process(db_url, tmp_path):
    bot_db = await Database.open(db_url)
    server = RecordingServer()
    tracker = ActiveVersionTracker(bot_db, server, poll_s=0.1)
    await tracker.start()
    try:
        assert tracker.get(7) is None
        for expected_number in (1, 2):
            done = subprocess.run([sys.executable, str(WORKER), "publish", db_url, "7", str(tmp_path / "a")],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            version_id = json.loads(done.stdout)
            deadline = time.monotonic() + 10
            while (tracker.get(7) is None or tracker.get(7).id != version_id):
                assert time.monotonic() < deadline, "the bot did not notice the trainer's flip"
                await asyncio.sleep(0.05)
            assert tracker.get(7).number == expected_number
            assert server.loaded[-1] == version_id  # loaded before it answers with it
        assert (await bot_db.versions.rollback_target(7)).number == 1
    finally:
        await tracker.stop()
        await bot_db.close()
