"""The trainer daemon: decides when a guild retrains, runs each job in a child process, then
publishes the new version and flips the guild's active-version pointer (the hot swap).

One job at a time (one GPU). The child (`python -m trainer.job RUN_ID`) owns training, evaluation
and the gate; a crash or an OOM there cannot take the daemon down, and its GPU memory is returned
when it exits. Publishing happens here, after the child succeeded, so a failed publish leaves the
old version active.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from serving.protocol import ModelServer, ModelServerError
from storage.db import Database
from storage.ownership import Owner
from storage.records import TrainingRun
from storage.schedule import parse_schedule
from trainer.job import JobOptions, version_dirs
from trainer.launch import LaunchError, LaunchOptions, inherited_environment, job_command

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 60.0
BACKOFF_MAX_S = 3600.0
CANCEL_GRACE_S = 20.0
#: A run's folders under versions_dir/<guild>/: `.run-N.tmp` while training, `run-N` once complete.
RUN_FOLDER = re.compile(r"^\.?run-(\d+)(?:\.tmp)?$")


@dataclass(frozen=True)
class DaemonOptions:
    """What the daemon reads of the settings (guildtune/runtime.py builds it)."""

    #: GUILDTUNE_KEEP_VERSIONS: good versions kept for rollback
    keep_versions: int
    #: GUILDTUNE_TRAINER_POLL: seconds between looks at the queue and the schedules
    poll_s: float
    launch: LaunchOptions
    #: handed to each job process (it holds where versions live: `job.versions_dir`)
    job: JobOptions


@dataclass
class RunOutcome:
    run: TrainingRun
    published: bool
    #: wall-clock seconds of the phases this daemon ran: job (the child process), publish, swap
    timings: dict[str, float] = field(default_factory=dict)


class TrainerDaemon:
    def __init__(self, db: Database, options: DaemonOptions, server: ModelServer,
                 on_swap: Callable[[], object] | None = None):
        self.db = db
        self.options = options
        self.server = server
        self.on_swap = on_swap  # e.g. the bot's tracker.refresh when both run in one process
        self._child: asyncio.subprocess.Process | None = None
        self._stopping = False

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> None:
        """At start: fail the runs whose owner died, then delete half-written artifacts (temporary
        folders, folders no servable version points at) except those of runs still in progress."""
        await self.reap_dead_runs()
        root = self.options.job.versions_dir
        if not root.is_dir():
            return
        in_progress = {run.id for run in await self.db.runs.running()}
        for guild_dir in root.iterdir():
            if not guild_dir.is_dir() or not guild_dir.name.isdigit():
                continue
            keep = {Path(p).resolve() for p in await self.db.versions.adapter_paths(int(guild_dir.name))}
            for child in guild_dir.iterdir():
                match = RUN_FOLDER.match(child.name)
                if match and int(match.group(1)) in in_progress:
                    continue  # another live process is training or publishing it
                if child.resolve() not in keep:
                    shutil.rmtree(child, ignore_errors=True)
                    log.info("removed leftover %s", child)

    async def reap_dead_runs(self) -> list[TrainingRun]:
        """Fail every running run whose owner process died, kill its job process if that outlived
        it, and delete what the run left: its folders and any version it got to publish (a run
        whose version was already activated succeeded instead). A run with a live owner (a
        `guildtune train` in another terminal, say) is left alone. Returns the failed runs."""
        reaped = []
        for run in await self.db.runs.dead():
            version = await self.db.versions.for_run(run.guild_id, run.id)
            if version is not None and version.status in ("active", "retired"):
                # the flip happened; only recording the success was cut short
                if await self.db.runs.finish(run.guild_id, run.id, "succeeded"):
                    log.warning("guild %s: run %s had activated v%s when its process died; marked succeeded",
                                run.guild_id, run.id, version.number)
                continue
            who = f"pid {run.owner.pid}" if run.owner else "claimed by an older guildtune"
            if not await self.db.runs.finish(run.guild_id, run.id, "failed",
                                             error=f"the training process ({who}) died before the run finished"):
                continue  # another entry point reaped it first
            log.warning("guild %s: run %s was left running by a process that died (%s); marked failed",
                        run.guild_id, run.id, who)
            if run.pid and run.pid_started and run.owner is not None:
                job = Owner(run.owner.host, run.pid, run.pid_started)
                if await asyncio.to_thread(job.kill):
                    log.warning("killed run %s's job process %s, which outlived its owner", run.id, run.pid)
            await self.discard_run(run)
            reaped.append(run)
        return reaped

    async def discard_run(self, run: TrainingRun) -> None:
        """Delete a finished-but-not-succeeded run's folders and the version it may have published."""
        version = await self.db.versions.for_run(run.guild_id, run.id)
        if version is not None and version.status == "removed":
            try:
                await self.server.remove(version)
            except ModelServerError as exc:
                log.warning("could not remove v%s of failed run %s from the model server: %s",
                            version.number, run.id, exc)
        for folder in version_dirs(self.options.job.versions_dir, run):
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ scheduling

    async def schedule_due(self, now: float | None = None) -> list[TrainingRun]:
        """Queue a run for every guild whose schedule slot has come and that has at least
        `min_new_examples` newly approved examples since its last successful run."""
        now = time.time() if now is None else now
        queued = []
        for guild_id in await self.db.settings.guild_ids():
            gs = await self.db.settings.get(guild_id)
            schedule = parse_schedule(gs.schedule)
            if await self.db.runs.current(guild_id) is not None:
                continue
            last_ok = await self.db.runs.last_finished(guild_id, "succeeded")
            last_at = last_ok.finished_at if last_ok else None
            due = schedule.next_due(last_at, now)
            if due is None or due > now:
                continue
            if await self.db.examples.approved_since(guild_id, last_at or 0.0) < gs.min_new_examples:
                continue
            failures, last_fail = await self.db.runs.consecutive_failures(guild_id)
            if failures and last_fail and now < last_fail + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** failures):
                continue  # back off after failures; a moderator's /retrain still goes through
            run, _, created = await self.db.runs.enqueue(guild_id, trigger="schedule")
            if created:
                queued.append(run)
        return queued

    # ------------------------------------------------------------------ running

    async def run_job_process(self, run: TrainingRun) -> int:
        """Run the child and wait; cancel it through the database flag, kill it if it ignores that."""
        env = inherited_environment(os.environ)
        env.update(self.options.job.to_env())
        try:  # one process, or accelerate's launcher of one per GPU (trainer/launch.py)
            argv, launch_env = job_command(run.id, self.options.launch)
        except LaunchError as exc:
            await self.db.runs.finish(run.guild_id, run.id, "failed", error=str(exc))
            return 1
        env.update(launch_env)
        self._child = await asyncio.create_subprocess_exec(*argv, env=env)
        job = Owner.of_pid(self._child.pid)  # its start time lets a later reaper kill it safely
        await self.db.runs.update(run.guild_id, run.id, pid=self._child.pid,
                                  pid_started=job.started if job else None)
        try:
            return await self._child.wait()
        except asyncio.CancelledError:
            await self.stop_child(run)
            raise
        finally:
            self._child = None

    async def stop_child(self, run: TrainingRun) -> None:
        """Ask the job to stop (it saves nothing and records 'cancelled'), then make sure."""
        child = self._child
        if child is None or child.returncode is not None:
            return
        await self.db.runs.request_cancel(run.guild_id, run.id)
        try:
            await asyncio.wait_for(child.wait(), CANCEL_GRACE_S)
        except asyncio.TimeoutError:
            child.kill()
            await child.wait()
        await self.db.runs.finish(run.guild_id, run.id, "cancelled", error="cancelled: the trainer was stopped")

    async def process(self, run: TrainingRun) -> RunOutcome:
        """Train (child), then publish, preload and flip the pointer if the child succeeded. The
        run always ends with an outcome: an unexpected error fails it with that error."""
        try:
            return await self._process(run)
        except asyncio.CancelledError:
            await self.db.runs.finish(run.guild_id, run.id, "cancelled", error="cancelled: the trainer was stopped")
            raise
        except Exception as exc:
            log.exception("guild %s: run %s failed", run.guild_id, run.id)
            if await self.db.runs.finish(run.guild_id, run.id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000]):
                await self.discard_run(run)
            return RunOutcome(await self.db.runs.get(run.guild_id, run.id), False)

    async def _process(self, run: TrainingRun) -> RunOutcome:
        log.info("guild %s: training run %s (%s)", run.guild_id, run.id, run.trigger)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        code = await self.run_job_process(run)
        timings["job_s"] = time.perf_counter() - t0
        after = await self.db.runs.get(run.guild_id, run.id)
        if after.status in ("gated", "failed", "cancelled"):
            return RunOutcome(after, False)
        version = await self.db.versions.for_run(run.guild_id, run.id)
        if code != 0 or version is None:
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            await self.db.runs.finish(run.guild_id, run.id, "failed",
                                      error=f"the training process died ({reason}) before finishing")
            await self.discard_run(run)
            return RunOutcome(await self.db.runs.get(run.guild_id, run.id), False)
        t0 = time.perf_counter()
        try:
            tag = await self.server.publish(version)
            await self.db.versions.set_tag(run.guild_id, version.id, tag)
            await self.server.preload(await self.db.versions.get(run.guild_id, version.id))
        except ModelServerError as exc:
            await self.db.runs.finish(run.guild_id, run.id, "failed",
                                      error=f"publishing v{version.number} failed: {exc}")
            await self.discard_run(run)
            return RunOutcome(await self.db.runs.get(run.guild_id, run.id), False)
        timings["publish_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await self.db.versions.activate(run.guild_id, version.id)
        await self.db.runs.finish(run.guild_id, run.id, "succeeded")
        if self.on_swap is not None:
            result = self.on_swap()
            if asyncio.iscoroutine(result):
                await result
        timings["swap_s"] = time.perf_counter() - t0
        await self.prune(run.guild_id)
        log.info("guild %s: v%s is active", run.guild_id, version.number)
        return RunOutcome(await self.db.runs.get(run.guild_id, run.id), True, timings)

    async def prune(self, guild_id: int) -> None:
        """Keep the newest `keep_versions` good versions (those that have served) for rollback;
        remove older ones. Versions of failed runs are never kept, so they never count."""
        for old in (await self.db.versions.kept(guild_id))[self.options.keep_versions:]:
            if old.status == "active":
                continue
            try:
                await self.server.remove(old)
            except ModelServerError as exc:
                log.warning("could not remove v%s from the model server: %s", old.number, exc)
            await self.db.versions.mark_removed(guild_id, old.id)
            shutil.rmtree(old.adapter_path, ignore_errors=True)

    async def tick(self) -> RunOutcome | None:
        await self.reap_dead_runs()
        await self.schedule_due()
        run = await self.db.runs.claim_next()
        if run is None:
            return None
        return await self.process(run)

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.recover()
        log.info("trainer daemon started (poll every %ss)", self.options.poll_s)
        while not stop.is_set():
            try:
                outcome = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trainer tick failed")
                outcome = None
            if outcome is None:
                try:
                    await asyncio.wait_for(stop.wait(), self.options.poll_s)
                except asyncio.TimeoutError:
                    pass


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover (Windows)
            pass
