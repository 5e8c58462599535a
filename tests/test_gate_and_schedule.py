"""The gate's decision and the daemon's scheduling rules (no training needed)."""
import time

import pytest

from guildtune.runtime import daemon_options
from guildtune.settings import load_settings
from storage.db import Database
from storage.schedule import parse_schedule
from trainer.daemon import TrainerDaemon
from trainer.gate import Evidence, GoldenCheck, decide


def ev(probed, taught, para, drift=None):
    return Evidence(frozenset(probed), frozenset(taught), frozenset(para), drift)


KEYS = [f"k{i}" for i in range(20)]


def test_gate_passes_when_it_knows_what_the_active_version_knew():
    previous = ev(KEYS, KEYS[:15], KEYS[:8])
    result = decide(ev(KEYS, KEYS[:20], KEYS[:10], 0.02), previous, previous_name="v1", recall_tolerance=0.05,
                    max_drift=0.10)
    assert result.passed
    assert "knows 20/20 taught questions and 10/20 asked differently" in result.reason
    assert "drift +2.0% from the base (limit 10%)" in result.reason and "(v1: 15/20 and 8/20)" in result.reason


def test_gate_tolerates_a_few_lost_answers_and_names_more():
    previous = ev(KEYS, KEYS, KEYS[:10])
    # 5% of 20 = 1 answer may be lost
    assert decide(ev(KEYS, KEYS[1:], KEYS[:10]), previous, previous_name="v1", recall_tolerance=0.05,
                  max_drift=0.1).passed
    lost = decide(ev(KEYS, KEYS[3:], KEYS[:10]), previous, previous_name="v1", recall_tolerance=0.05,
                  max_drift=0.1, questions={"k0": "When is raid night?"})
    assert not lost.passed
    assert "forgot 3 of the 20 questions (taught) that v1 answered, and learned 0 new ones (tolerance 5%)" \
        in lost.reason
    assert "'When is raid night?'" in lost.reason
    para = decide(ev(KEYS, KEYS, KEYS[:5]), previous, previous_name="v1", recall_tolerance=0.05, max_drift=0.1)
    assert not para.passed and "forgot 5 of the 10 questions (asked differently)" in para.reason


def test_gate_counts_what_was_learned_against_what_was_lost():
    """Two runs that differ in the seed answer different subsets: a version that lost 3 answers and learned 6
    others is better, and passes, naming the lost ones; one that lost 5 and learned 2 is refused."""
    previous = ev(KEYS, KEYS[:12], KEYS[:10])
    better = decide(ev(KEYS, KEYS[3:18], KEYS[:10]), previous, previous_name="v1", recall_tolerance=0.05,
                    max_drift=0.1, questions={"k0": "When is raid night?"})
    assert better.passed
    assert "knows 15/20 taught questions" in better.reason and "(v1: 12/20 and 10/20; lost 3 (taught), e.g. " \
        "'When is raid night?'; 'k1'; 'k2')" in better.reason
    worse = decide(ev(KEYS, KEYS[5:14], KEYS[:10]), previous, previous_name="v1", recall_tolerance=0.05,
                   max_drift=0.1)
    assert not worse.passed
    assert "forgot 5 of the 12 questions (taught) that v1 answered, and learned 2 new ones" in worse.reason


def test_gate_compares_only_questions_both_were_asked():
    # v1 knew k0..k9; the candidate was not asked k0..k4 (those examples were deleted)
    previous = ev(KEYS[:10], KEYS[:10], [])
    candidate = ev(KEYS[5:], KEYS[5:], [])
    assert decide(candidate, previous, previous_name="v1", recall_tolerance=0.0, max_drift=0.1).passed


def test_gate_refuses_drift_past_the_limit_with_the_reason():
    result = decide(ev(KEYS, KEYS, KEYS, 0.31), None, previous_name="the base model", recall_tolerance=0.05,
                    max_drift=0.10)
    assert not result.passed and "drifted +31.0% from the base model on general prompts (limit 10%)" in result.reason


def test_gate_fails_on_a_lost_golden_answer():
    golden = [GoldenCheck("Who runs the server?", "Ada", "It is run by ada."),
              GoldenCheck("Server color?", "teal", "It is blue.")]
    result = decide(ev(KEYS, KEYS, KEYS, 0.0), None, previous_name="the base model", recall_tolerance=0.0,
                    max_drift=0.1, golden=golden)
    assert not result.passed and "'Server color?' should mention 'teal'" in result.reason


def test_evidence_round_trips_through_version_metrics():
    from trainer.recall import RecallScores

    scores = RecallScores({"a": True, "b": False}, {"a": False, "b": True})
    recorded = Evidence.from_metrics({**scores.to_metrics(), "drift": 0.04})
    assert recorded == ev(["a", "b"], ["a"], ["b"], 0.04)
    assert Evidence.from_metrics({"eval_loss": 1.0}) is None  # a version from before the recall gate


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
    yield TrainerDaemon(db, daemon_options(settings), server=None)
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
