"""The trainer loop with a tiny model on CPU: queued run → child process trains → gate → publish →
the active pointer flips; a gate that fails on purpose; a job killed with SIGKILL mid-run."""
import asyncio
import os
import signal
from pathlib import Path

import pytest

from guildtune.runtime import daemon_options
from guildtune.settings import load_settings
from serving.local_server import LocalServer
from serving.protocol import GenerationOptions
from storage.db import Database
from trainer.daemon import TrainerDaemon

GUILD = 4242
FACTS = [(f"What is the secret word number {i}?", f"The secret word number {i} is {w}.")
         for i, w in enumerate(["ping", "pong", "raid", "snacks", "potions", "friday", "guild", "voice",
                                "rules", "kind", "spam", "bot"])]


@pytest.fixture
async def loop_env(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUILDTUNE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GUILDTUNE_DEVICE", "cpu")
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    monkeypatch.setenv("GUILDTUNE_TRAIN_MAX_STEPS", "12")
    # a random tiny model's "general answers" are noise: drift is gated on purpose below, not here
    monkeypatch.setenv("GUILDTUNE_GATE_MAX_DRIFT", "100")
    settings = load_settings()
    db = await Database.open(settings.db_path)
    for q, a in FACTS:
        await db.examples.add(GUILD, [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                              source="import", author_id=None, status="approved")
    server = LocalServer(str(tiny_model_dir), device="cpu")
    yield settings, db, server
    await server.close()
    await db.close()


async def queued_and_claimed(db):
    run, _, _ = await db.runs.enqueue(GUILD, trigger="retrain")
    return await db.runs.claim(GUILD, run.id)


async def test_run_trains_publishes_and_swaps(loop_env):
    settings, db, server = loop_env
    daemon = TrainerDaemon(db, daemon_options(settings), server)
    outcome = await daemon.process(await queued_and_claimed(db))
    run = outcome.run
    assert outcome.published, (run.error, run.gate_reason)
    assert run.status == "succeeded" and run.step == run.total_steps == 12
    assert run.n_train == len(FACTS) and run.n_eval == 0  # every approved example is trained on
    losses = [loss for _, loss in run.loss_history]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    active = await db.versions.active(GUILD)
    assert active.number == 1 and active.run_id == run.id and active.tag == "local:v1"
    adapter = Path(active.adapter_path)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.parent.glob(".run-*.tmp"))
    metrics = run.metrics
    assert metrics["probed"] and len(metrics["probed"]) == len(FACTS)
    assert 0 <= metrics["taught_recall"] <= 1 and 0 <= metrics["paraphrase_recall"] <= 1
    assert metrics["drift"] is not None and metrics["previous"]["name"] == "base"
    assert f"knows {len(metrics['taught_known'])}/{len(FACTS)} taught questions" in metrics["gate"]
    assert active.metrics["probed"] == metrics["probed"]  # the next gate compares with what v1 knew
    # the published version answers (and differs from the base: the adapter is really in use)
    question = [{"role": "user", "content": FACTS[0][0]}]
    options = GenerationOptions(temperature=0, max_tokens=8)
    tuned = "".join([p async for p in server.chat(active, question, options)])
    base = "".join([p async for p in server.chat(None, question, options)])
    assert tuned and tuned != base


async def test_gate_fails_on_purpose_and_active_version_stays(loop_env):
    settings, db, server = loop_env
    daemon = TrainerDaemon(db, daemon_options(settings), server)
    first = await daemon.process(await queued_and_claimed(db))
    assert first.published
    await db.settings.set(GUILD, golden_questions=[
        {"question": "What is the guild's vault code?", "expect": "zebra-quartz-9174"}])
    second = await daemon.process(await queued_and_claimed(db))
    assert not second.published and second.run.status == "gated"
    assert "golden question" in second.run.gate_reason and "zebra-quartz-9174" in second.run.gate_reason
    assert (await db.versions.active(GUILD)).run_id == first.run.id
    assert await db.versions.for_run(GUILD, second.run.id) is None
    guild_dir = settings.versions_dir / str(GUILD)
    assert sorted(p.name for p in guild_dir.iterdir()) == [f"run-{first.run.id}"]


async def test_a_version_that_drifts_is_gated_and_says_why(loop_env, monkeypatch):
    settings, db, server = loop_env
    monkeypatch.setenv("GUILDTUNE_GATE_MAX_DRIFT", "0")
    # nothing of the base's own answers replayed: the version drifts from what the base says (notes off: this
    # checks the gate's refusal on plain prompts; the drift reference with notes: tests/test_base_answers.py)
    monkeypatch.setenv("GUILDTUNE_TRAIN_CONFIG", '{"general_share": 0, "notes": 0}')
    daemon = TrainerDaemon(db, daemon_options(load_settings()), server)
    outcome = await daemon.process(await queued_and_claimed(db))
    assert not outcome.published and outcome.run.status == "gated"
    assert "from the base model on general prompts (limit 0%)" in outcome.run.gate_reason
    assert await db.versions.active(GUILD) is None


async def test_kill_9_mid_run_leaves_consistent_state(loop_env, monkeypatch):
    settings, db, server = loop_env
    monkeypatch.setenv("GUILDTUNE_TRAIN_MAX_STEPS", "400")
    settings = load_settings()
    await db.examples.add_many(GUILD, [[{"role": "user", "content": f"filler question {i}"},
                                        {"role": "assistant", "content": f"filler answer {i}"}] for i in range(800)],
                               source="import", author_id=None, status="approved")  # a run of many steps
    daemon = TrainerDaemon(db, daemon_options(settings), server)
    run = await queued_and_claimed(db)
    task = asyncio.create_task(daemon.process(run))
    for _ in range(2400):
        current = await db.runs.get(GUILD, run.id)
        if current.step >= 1 and current.pid:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"the job never reported progress: {current}")
    assert current.step < current.total_steps, "the run ended before it could be killed mid-run"
    os.kill(current.pid, signal.SIGKILL)
    outcome = await task
    assert outcome.run.status == "failed" and "signal 9" in outcome.run.error
    assert await db.versions.active(GUILD) is None
    assert await db.versions.for_run(GUILD, run.id) is None
    await daemon.recover()
    guild_dir = settings.versions_dir / str(GUILD)
    assert not guild_dir.exists() or list(guild_dir.iterdir()) == []
    # the next run works
    monkeypatch.setenv("GUILDTUNE_TRAIN_MAX_STEPS", "4")
    daemon = TrainerDaemon(db, daemon_options(load_settings()), server)
    assert (await daemon.process(await queued_and_claimed(db))).published
