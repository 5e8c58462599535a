"""Crash recovery: `guildtune train` killed with SIGKILL at each phase of a run, then run again.

The phases: before training (the job process has started, no step yet; only the owner is killed,
so its job is orphaned), mid-training (owner and job killed together), after the version row is
created (the publish hangs on the stand-in Ollama) and before the pointer flip (the version is
published; loading it hangs). After each kill the next `guildtune train` fails the dead run with
its reason, deletes what it left (folders, a published tag), trains and activates a new version,
and `/model rollback` still has a good version to go back to. While a run is live, a trainer
daemon starting beside it, and a second `guildtune train`, leave it alone.

Each kill point is reached by watching state a user could see (the run row, the version row,
requests reaching the model server), never by a test hook in the code under test.
"""
from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import pytest
from rich.console import Console

from guildtune.runtime import daemon_options, make_server
from guildtune.settings import load_settings
from guildtune.train_command import train_now
from storage.db import Database
from storage.ownership import Owner
from storage.records import TrainingRun
from trainer.daemon import TrainerDaemon
from trainer.job import version_dirs

GUILD = 77
FACTS = [(f"What is the secret word number {i}?", f"The secret word number {i} is {w}.")
         for i, w in enumerate(["ping", "pong", "raid", "snacks", "potions", "friday", "guild", "voice",
                                "rules", "kind", "spam", "bot"])]
REPO = Path(__file__).resolve().parents[1]
LONG_RUN_STEPS = 400  # capped by the epoch policy at 60 steps on 12 facts: seconds of training
QUICK_RUN_STEPS = 3


@pytest.fixture
async def crash_env(tmp_path, monkeypatch, tiny_llama_dir, standin):
    # llama: Ollama takes its LoRA adapter as is, so publishing needs no merge (the cheap path)
    values = {"GUILDTUNE_DATA_DIR": tmp_path / "data", "GUILDTUNE_BASE_MODEL": tiny_llama_dir,
              "GUILDTUNE_DEVICE": "cpu", "GUILDTUNE_SERVER": "ollama", "OLLAMA_HOST": standin.url,
              "GUILDTUNE_OLLAMA_BASE": "llama3.2:1b", "GUILDTUNE_KEEP_VERSIONS": 2,
              "GUILDTUNE_GATE_TOLERANCE": 1.0,  # the gate is not under test here
              "GUILDTUNE_TRAIN_MAX_STEPS": QUICK_RUN_STEPS,
              "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))
    for key in ("GUILDTUNE_DB", "GUILDTUNE_MODELS_DIR", "DISCORD_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings()
    db = await Database.open(settings.db_path)
    for q, a in FACTS:
        await db.examples.add(GUILD, [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                              source="import", author_id=None, status="approved")
    yield settings, db, standin, tmp_path
    await db.close()


async def spawn_train(tmp_path: Path, name: str, steps: int) -> asyncio.subprocess.Process:
    """`guildtune train` as a user starts it, in its own process group (so a test can kill it
    alone or together with its job process); output goes to a log file."""
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed by the child's exit
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guildtune", "train", "--guild", str(GUILD), stdout=log, stderr=log,
            env={**os.environ, "GUILDTUNE_TRAIN_MAX_STEPS": str(steps)}, start_new_session=True)
    finally:
        log.close()


async def train_ok(settings) -> str:
    """`guildtune train` run to the end: the command's own function, in this process (only the
    runs that get killed need a process of their own)."""
    console = Console(file=io.StringIO(), width=200)
    code = await train_now(settings, GUILD, console)
    output = console.file.getvalue()
    assert code == 0, output
    return output


async def wait_for(check, what: str, timeout: float = 120.0):
    """Poll `check()` (a coroutine function) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def live_run(db: Database) -> TrainingRun | None:
    run = await db.runs.current(GUILD)
    return run if run is not None and run.status == "running" else None


async def kill(proc: asyncio.subprocess.Process, *, with_job: bool) -> None:
    if with_job:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


async def check_recovered(settings, db: Database, ollama, crashed: TrainingRun, owner_pid: int, output: str,
                          previous_active: int) -> None:
    """What every recovery must leave: the dead run failed with its reason, nothing of it kept, a
    new active version, and a good older version to roll back to (servable on the model server)."""
    assert f"run {crashed.id} of guild {GUILD} had been left running by a process that died" in output
    dead = await db.runs.get(GUILD, crashed.id)
    assert dead.status == "failed" and f"the training process (pid {owner_pid}) died" in dead.error
    leftover = await db.versions.for_run(GUILD, crashed.id)
    assert leftover is None or leftover.status == "removed"
    if leftover is not None:
        assert f"guildtune-{GUILD}:v{leftover.number}" not in ollama.models
    assert not any(folder.exists() for folder in version_dirs(settings.versions_dir, crashed))
    if crashed.pid and crashed.pid_started:
        assert not Owner(crashed.owner.host, crashed.pid, crashed.pid_started).is_alive()
    active = await db.versions.active(GUILD)
    newest = await db.runs.last_finished(GUILD)
    assert newest.status == "succeeded" and active.run_id == newest.id
    assert active.tag in ollama.models
    target = await db.versions.rollback_target(GUILD)
    assert target is not None and target.id == previous_active, "rollback lost its target"
    assert target.tag in ollama.models and Path(target.adapter_path).is_dir()
    kept = await db.versions.kept(GUILD)
    assert [v.id for v in kept] == [active.id, target.id]  # keep_versions=2, both good
    guild_dir = settings.versions_dir / str(GUILD)
    assert sorted(p.name for p in guild_dir.iterdir()) == sorted(Path(v.adapter_path).name for v in kept)


@pytest.mark.timeout(900)  # nine training runs: 2 minutes on 2 shared cores, 8 under a load average of 10
async def test_killed_at_every_phase_then_trains_and_rollback_survives(crash_env):
    settings, db, ollama, tmp_path = crash_env
    await train_ok(settings)
    active = await db.versions.active(GUILD)
    assert active.number == 1

    # 1. before training: the job process exists, no step yet; only its owner dies (the job is orphaned)
    proc = await spawn_train(tmp_path, "crash-before-training", LONG_RUN_STEPS)
    run = await wait_for(lambda: _with_job(db), "the job process to start")
    assert run.step == 0 and run.total_steps == 0 and run.owner.pid == proc.pid
    await kill(proc, with_job=False)
    assert Owner(run.owner.host, run.pid, run.pid_started).is_alive()  # orphaned, still going
    output = await train_ok(settings)
    await check_recovered(settings, db, ollama, run, proc.pid, output, previous_active=active.id)
    active = await db.versions.active(GUILD)

    # 2. mid-training: owner and job killed together, after a trainer daemon and a second
    #    `guildtune train` started beside the live run and left it alone
    proc = await spawn_train(tmp_path, "crash-mid-training", LONG_RUN_STEPS)
    run = await wait_for(lambda: _training(db), "training progress")
    tmp_dir, _ = version_dirs(settings.versions_dir, run)
    server = await make_server(settings)
    try:
        daemon = TrainerDaemon(db, daemon_options(settings), server)
        await daemon.recover()  # what `guildtune trainer` does at start
        assert await daemon.tick() is None
    finally:
        await server.close()
    console = Console(file=io.StringIO(), width=200)
    assert await train_now(settings, GUILD, console) == 1  # a second `guildtune train`
    assert f"run {run.id} of guild {GUILD} is already training (pid {proc.pid})" in console.file.getvalue()
    still = await db.runs.get(GUILD, run.id)
    assert still.status == "running" and tmp_dir.is_dir(), "a live run was touched"
    assert 1 <= still.step < still.total_steps, "the run ended before it could be killed mid-training"
    await kill(proc, with_job=True)
    output = await train_ok(settings)
    await check_recovered(settings, db, ollama, run, proc.pid, output, previous_active=active.id)
    active = await db.versions.active(GUILD)

    # 3. after the version row is created: publishing it hangs, the owner dies
    ollama.stall = {"create"}
    proc = await spawn_train(tmp_path, "crash-after-version-row", QUICK_RUN_STEPS)
    await wait_for(_async(lambda: "create" in ollama.stalled), "the publish to reach the model server")
    run = await live_run(db)
    version = await db.versions.for_run(GUILD, run.id)
    assert version is not None and version.status == "ready" and version.tag is None
    await kill(proc, with_job=False)
    ollama.release_stalled()
    ollama.stalled.clear()
    output = await train_ok(settings)
    await check_recovered(settings, db, ollama, run, proc.pid, output, previous_active=active.id)
    assert (await db.versions.get(GUILD, version.id)).status == "removed"
    active = await db.versions.active(GUILD)

    # 4. before the pointer flip: the version is published (its tag exists), loading it hangs
    ollama.stall = {"load"}
    proc = await spawn_train(tmp_path, "crash-before-flip", QUICK_RUN_STEPS)
    await wait_for(_async(lambda: "load" in ollama.stalled), "the new version to be loading")
    run = await live_run(db)
    version = await db.versions.for_run(GUILD, run.id)
    assert version.status == "ready" and version.tag in ollama.models
    assert (await db.versions.active(GUILD)).id == active.id
    await kill(proc, with_job=False)
    ollama.release_stalled()
    output = await train_ok(settings)
    await check_recovered(settings, db, ollama, run, proc.pid, output, previous_active=active.id)
    assert version.tag not in ollama.models  # the dead run's published tag was deleted


async def _with_job(db: Database) -> TrainingRun | None:
    run = await live_run(db)
    return run if run is not None and run.pid and run.pid_started else None


async def _training(db: Database) -> TrainingRun | None:
    run = await live_run(db)
    return run if run is not None and run.step >= 1 else None


def _async(predicate):
    async def check():
        return predicate()
    return check
