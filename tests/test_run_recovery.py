"""Runs whose process died, versions of failed runs, pruning that keeps rollback possible, and
runs that fail early: the daemon's recovery rules, mostly without training (the SIGKILL test
with real training runs is tests/test_crash_recovery.py)."""
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guildtune.cli import app
from guildtune.runtime import daemon_options
from guildtune.settings import load_settings
from serving.ollama_server import OllamaServer
from storage.db import Database
from storage.ownership import Owner
from trainer.daemon import TrainerDaemon
from trainer.job import version_dirs

GUILD = 5


def conv(q):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": "a " + q}]


@pytest.fixture
async def daemon(tmp_path, monkeypatch, standin):
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUILDTUNE_KEEP_VERSIONS", "2")
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    settings = load_settings()
    db = await Database.open(settings.db_path)
    server = OllamaServer(standin.url, base_tag="llama3.2:1b", work_dir=tmp_path / "stage")
    yield TrainerDaemon(db, daemon_options(settings), server)
    await server.close()
    await db.close()


def dead_process() -> Owner:
    """The identity of a local process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner.of_pid(proc.pid)
    proc.wait()
    assert owner is not None and not owner.is_alive()
    return owner


async def claimed_run(daemon, owner: Owner | None = None):
    run, _, _ = await daemon.db.runs.enqueue(GUILD, trigger="retrain")
    return await daemon.db.runs.claim(GUILD, run.id, owner=owner)


async def version_of(daemon, run, *, activate: bool):
    """What the job and the daemon write for a run that trained: folder, version row, flip."""
    _, final_dir = version_dirs(daemon.options.job.versions_dir, run)
    final_dir.mkdir(parents=True)
    version = await daemon.db.versions.create(GUILD, run_id=run.id, adapter_path=str(final_dir),
                                              base_model="b", metrics={}, n_examples=2)
    if activate:
        version = await daemon.db.versions.activate(GUILD, version.id)
        await daemon.db.runs.finish(GUILD, run.id, "succeeded")
    return version


async def test_dead_owners_runs_fail_and_their_orphaned_job_is_killed(daemon):
    db = daemon.db
    owner = dead_process()
    run = await claimed_run(daemon, owner)
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        job_identity = Owner.of_pid(job.pid)
        await db.runs.update(GUILD, run.id, pid=job.pid, pid_started=job_identity.started)
        tmp_dir, final_dir = version_dirs(daemon.options.job.versions_dir, run)
        tmp_dir.mkdir(parents=True)
        [reaped] = await daemon.reap_dead_runs()
        assert reaped.id == run.id
        assert job.wait(10) == -9  # the job outlived its owner and was killed
    finally:
        job.kill()
    after = await db.runs.get(GUILD, run.id)
    assert after.status == "failed" and after.error == (
        f"the training process (pid {owner.pid}) died before the run finished")
    assert not tmp_dir.exists()
    assert await daemon.reap_dead_runs() == []  # once
    # `guildtune train` is not blocked by it: a new run can be queued and claimed
    assert (await claimed_run(daemon)).status == "running"


async def test_a_live_owners_run_is_left_alone_by_a_starting_daemon(daemon):
    run = await claimed_run(daemon)  # owned by this (live) process, as by `guildtune train`
    tmp_dir, _ = version_dirs(daemon.options.job.versions_dir, run)
    tmp_dir.mkdir(parents=True)
    (tmp_dir / "adapter_model.safetensors").write_bytes(b"training...")
    other_owner_pid_reused = Owner(run.owner.host, run.owner.pid, run.owner.started + 7200)
    assert not other_owner_pid_reused.is_alive()  # same pid, other start: not the owner
    await daemon.recover()
    assert await daemon.tick() is None
    still = await daemon.db.runs.get(GUILD, run.id)
    assert still.status == "running" and (tmp_dir / "adapter_model.safetensors").is_file()


async def test_failed_runs_keep_no_version_and_pruning_keeps_good_ones_for_rollback(daemon):
    db = daemon.db
    good = []
    for _ in range(2):
        run = await claimed_run(daemon)
        good.append(await version_of(daemon, run, activate=True))
    # killed between creating its version and the flip: the run fails, its version is never kept
    crashed = await claimed_run(daemon, dead_process())
    ready = await version_of(daemon, crashed, activate=False)
    await daemon.reap_dead_runs()
    assert (await db.versions.get(GUILD, ready.id)).status == "removed"
    assert not Path(ready.adapter_path).exists()
    with pytest.raises(LookupError, match="removed"):
        await db.versions.activate(GUILD, ready.id)
    # a job that trained on after its run was failed cannot create a version
    late = await claimed_run(daemon, dead_process())
    await daemon.reap_dead_runs()
    with pytest.raises(LookupError, match="failed, not running"):
        await db.versions.create(GUILD, run_id=late.id, adapter_path="/x", base_model="b", metrics={}, n_examples=1)
    # the next good run prunes by good versions only: the last one to roll back to stays
    newest = await version_of(daemon, await claimed_run(daemon), activate=True)
    await daemon.prune(GUILD)
    assert [v.id for v in await db.versions.kept(GUILD)] == [newest.id, good[1].id]
    assert (await db.versions.get(GUILD, good[0].id)).status == "removed"
    assert (await db.versions.rollback_target(GUILD)).id == good[1].id
    assert Path(good[1].adapter_path).is_dir() and not Path(good[0].adapter_path).exists()


async def test_a_run_killed_after_the_flip_succeeded(daemon):
    run = await claimed_run(daemon, dead_process())
    _, final_dir = version_dirs(daemon.options.job.versions_dir, run)
    final_dir.mkdir(parents=True)
    version = await daemon.db.versions.create(GUILD, run_id=run.id, adapter_path=str(final_dir), base_model="b",
                                              metrics={}, n_examples=2)
    await daemon.db.versions.activate(GUILD, version.id)  # ...and the process died before `finish`
    assert await daemon.reap_dead_runs() == []
    assert (await daemon.db.runs.get(GUILD, run.id)).status == "succeeded"
    assert (await daemon.db.versions.active(GUILD)).id == version.id and final_dir.is_dir()


async def test_an_unexpected_error_after_training_fails_the_run(daemon, monkeypatch):
    run = await claimed_run(daemon)

    async def job_that_trained(r):  # the child's part: a complete version, exit code 0
        await version_of(daemon, r, activate=False)
        return 0

    async def broken_publish(version, **kwargs):
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(daemon, "run_job_process", job_that_trained)
    monkeypatch.setattr(daemon.server, "publish", broken_publish)
    outcome = await daemon.process(run)
    assert not outcome.published and outcome.run.status == "failed"
    assert outcome.run.error == "RuntimeError: disk quota exceeded"
    assert (await daemon.db.versions.for_run(GUILD, run.id)).status == "removed"
    assert not any(folder.exists() for folder in version_dirs(daemon.options.job.versions_dir, run))


def test_train_with_a_bad_base_model_path_fails_and_leaves_nothing_running(tmp_path, monkeypatch):
    for key, value in {"GUILDTUNE_DATA_DIR": tmp_path / "data", "GUILDTUNE_BASE_MODEL": tmp_path / "nowhere",
                       "GUILDTUNE_DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, str(value))
    for key in ("GUILDTUNE_DB", "GUILDTUNE_SERVER", "DISCORD_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    runner = CliRunner()
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join('{"messages": [{"role": "user", "content": "q%d"}, '
                               '{"role": "assistant", "content": "a%d"}]}' % (i, i) for i in range(3)))
    assert runner.invoke(app, ["dataset", "import", "--guild", "3", "--approve", str(facts)]).exit_code == 0
    for _ in range(2):  # and again: nothing was left running to block it
        result = runner.invoke(app, ["train", "--guild", "3"])
        assert result.exit_code == 1 and "nowhere" in result.output and "already training" not in result.output

    async def runs():
        db = await Database.open(load_settings().db_path)
        try:
            return await db.runs.list(3)
        finally:
            await db.close()

    assert asyncio.run(runs()) == []  # the base model is checked before a run is claimed
