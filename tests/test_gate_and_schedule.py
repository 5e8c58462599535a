"""The gate's decision and the daemon's scheduling rules (no training needed)."""
import time

import pytest

from guildtune.settings import load_settings
from storage.db import Database
from storage.schedule import parse_schedule
from trainer.daemon import TrainerDaemon
from trainer.gate import GoldenCheck, decide


def test_gate_passes_within_tolerance_and_fails_beyond():
    ok = decide(1.01, 1.0, tolerance=0.02, baseline_name="v1")
    assert ok.passed and "vs v1's 1.0000" in ok.reason
    bad = decide(1.05, 1.0, tolerance=0.02, baseline_name="v1")
    assert not bad.passed and "worse than v1's 1.0000" in bad.reason


def test_gate_fails_on_a_lost_golden_answer():
    golden = [GoldenCheck("Who runs the server?", "Ada", "It is run by ada."),
              GoldenCheck("Server color?", "teal", "It is blue.")]
    result = decide(0.5, 1.0, tolerance=0.0, baseline_name="the base model", golden=golden)
    assert not result.passed and "'Server color?' should mention 'teal'" in result.reason


def test_schedules():
    assert parse_schedule("off").next_due(None, 100) is None
    assert parse_schedule("interval:6h").next_due(1000.0, 2000.0) == 1000.0 + 6 * 3600
    daily = parse_schedule("daily:03:00")
    due = daily.next_due(0.0, 10.0)  # last run at 1970-01-01 00:00 UTC → next 03:00 the same day
    assert due == 3 * 3600


def conv(q):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": "a " + q}]


@pytest.fixture
async def daemon(tmp_path, monkeypatch):
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path))
    settings = load_settings()
    db = await Database.open(settings.db_path)
    yield TrainerDaemon(db, settings, server=None)
    await db.close()


async def test_schedule_needs_min_new_examples_and_due_slot(daemon):
    db = daemon.db
    await db.settings.set(1, schedule="interval:1h", min_new_examples=3)
    for i in range(2):
        await db.examples.add(1, conv(f"q{i}"), source="import", author_id=None, status="approved")
    assert await daemon.schedule_due() == []  # 2 < 3
    await db.examples.add(1, conv("q2"), source="import", author_id=None, status="approved")
    [run] = await daemon.schedule_due()
    assert run.trigger == "schedule" and run.guild_id == 1
    assert await daemon.schedule_due() == []  # already queued
    await db.runs.claim_next()
    await db.runs.finish(1, run.id, "succeeded")
    for i in range(3, 6):
        await db.examples.add(1, conv(f"q{i}"), source="import", author_id=None, status="approved")
    assert await daemon.schedule_due() == []  # interval not over yet
    assert len(await daemon.schedule_due(now=time.time() + 3601)) == 1


async def test_backoff_after_failures_and_off_schedule(daemon):
    db = daemon.db
    await db.settings.set(2, schedule="interval:5m", min_new_examples=1)
    await db.settings.set(3, schedule="off", min_new_examples=1)
    for g in (2, 3):
        await db.examples.add(g, conv("x"), source="import", author_id=None, status="approved")
    [run] = await daemon.schedule_due()
    assert run.guild_id == 2
    await db.runs.claim_next()
    await db.runs.finish(2, run.id, "failed", error="boom")
    assert await daemon.schedule_due() == []  # backing off
    assert [r.guild_id for r in await daemon.schedule_due(now=time.time() + 3700)] == [2]
