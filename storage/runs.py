"""Training runs: the queue the daemon works through, and the progress the bot displays.

A claimed run records its owner (storage.ownership): the process that drives it to the end. Any
entry point can then tell a live run from one whose process died (`dead`), and a live owner's
run is never touched by another process."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from storage.ownership import Owner
from storage.records import TrainingRun

if TYPE_CHECKING:
    from storage.db import Database

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "gated", "cancelled")


def _row_to_run(r: Any) -> TrainingRun:
    return TrainingRun(
        id=r["id"], guild_id=r["guild_id"], status=r["status"], trigger=r["trigger"],
        requested_by=r["requested_by"], n_train=r["n_train"], n_eval=r["n_eval"], step=r["step"],
        total_steps=r["total_steps"], loss=r["loss"], eta_s=r["eta_s"], eval_loss=r["eval_loss"],
        baseline_eval_loss=r["baseline_eval_loss"], metrics=json.loads(r["metrics"]), error=r["error"],
        gate_reason=r["gate_reason"], cancel_requested=bool(r["cancel_requested"]), pid=r["pid"],
        loss_history=json.loads(r["loss_history"]), created_at=r["created_at"], started_at=r["started_at"],
        finished_at=r["finished_at"], progress_message_id=r["progress_message_id"],
        owner=None if r["owner_pid"] is None else Owner(r["owner_host"], r["owner_pid"], r["owner_started"]),
        pid_started=r["pid_started"],
    )


_CLAIM = "status='running', started_at=?, owner_host=?, owner_pid=?, owner_started=?"


def _claim_params(owner: Owner | None) -> tuple:
    owner = owner or Owner.this_process()
    return (time.time(), owner.host, owner.pid, owner.started)


class RunRepository:
    def __init__(self, db: "Database"):
        self.db = db

    async def enqueue(self, guild_id: int, *, trigger: str, requested_by: int | None = None
                      ) -> tuple[TrainingRun, int, bool]:
        """Queue a run unless this guild already has one waiting or running.

        Returns (run, place in the queue counting a running job as place 0, created)."""
        async with self.db.transaction() as conn:
            row = await self.db.fetchone(
                "SELECT * FROM training_runs WHERE guild_id=? AND status IN ('queued','running') ORDER BY id LIMIT 1",
                (guild_id,))
            created = row is None
            if created:
                row = await conn.fetchone(
                    "INSERT INTO training_runs (guild_id, status, trigger, requested_by, created_at)"
                    " VALUES (?, 'queued', ?, ?, ?) RETURNING *", (guild_id, trigger, requested_by, time.time()))
        run = _row_to_run(row)
        return run, await self.queue_position(run), created

    async def queue_position(self, run: TrainingRun) -> int:
        """0 = running now; N = N-th in line (1 = next)."""
        if run.status == "running":
            return 0
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM training_runs WHERE status='queued' AND id<=?", (run.id,))
        return int(row["n"])

    async def claim_next(self, owner: Owner | None = None) -> TrainingRun | None:
        """Move the oldest queued run to running, owned by `owner` (default: this process); only one
        claimer can win it, on any host.

        One conditional UPDATE: the write transaction already serialises claimers, and even a
        concurrent one re-checks `status='queued'` on the row it waited for, so no run is taken twice."""
        async with self.db.transaction() as conn:
            claimed = await conn.fetchone(
                f"UPDATE training_runs SET {_CLAIM} WHERE status='queued' AND id="
                "(SELECT id FROM training_runs WHERE status='queued' ORDER BY id LIMIT 1) RETURNING *",
                _claim_params(owner))
        return _row_to_run(claimed) if claimed else None

    async def claim(self, guild_id: int, run_id: int, owner: Owner | None = None) -> TrainingRun | None:
        """Move this queued run to running (for `guildtune train`), owned by `owner` (default: this
        process); None if someone else has it."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE training_runs SET {_CLAIM} WHERE guild_id=? AND id=? AND status='queued'",
                (*_claim_params(owner), guild_id, run_id))
        return await self.get(guild_id, run_id) if cur.rowcount == 1 else None

    async def by_id(self, run_id: int) -> TrainingRun | None:
        """Unscoped look-up for the job process, which is handed only its run id."""
        row = await self.db.fetchone("SELECT * FROM training_runs WHERE id=?", (run_id,))
        return _row_to_run(row) if row else None

    async def get(self, guild_id: int, run_id: int) -> TrainingRun | None:
        row = await self.db.fetchone("SELECT * FROM training_runs WHERE guild_id=? AND id=?", (guild_id, run_id))
        return _row_to_run(row) if row else None

    async def list(self, guild_id: int, limit: int = 20) -> list[TrainingRun]:
        rows = await self.db.fetchall(
            "SELECT * FROM training_runs WHERE guild_id=? ORDER BY id DESC LIMIT ?", (guild_id, limit))
        return [_row_to_run(r) for r in rows]

    async def current(self, guild_id: int) -> TrainingRun | None:
        row = await self.db.fetchone(
            "SELECT * FROM training_runs WHERE guild_id=? AND status IN ('queued','running') ORDER BY id LIMIT 1",
            (guild_id,))
        return _row_to_run(row) if row else None

    async def last_finished(self, guild_id: int, status: str | None = None) -> TrainingRun | None:
        sql = "SELECT * FROM training_runs WHERE guild_id=? AND status IN ('succeeded','failed','gated','cancelled')"
        params: tuple = (guild_id,)
        if status:
            sql += " AND status=?"
            params += (status,)
        row = await self.db.fetchone(sql + " ORDER BY id DESC LIMIT 1", params)
        return _row_to_run(row) if row else None

    async def consecutive_failures(self, guild_id: int) -> tuple[int, float | None]:
        """How many of the latest finished runs failed in a row, and when the last one ended."""
        rows = await self.db.fetchall(
            "SELECT status, finished_at FROM training_runs WHERE guild_id=? AND status IN "
            "('succeeded','failed','gated','cancelled') ORDER BY id DESC LIMIT 10", (guild_id,))
        n = 0
        for r in rows:
            if r["status"] != "failed":
                break
            n += 1
        return n, (rows[0]["finished_at"] if rows else None)

    async def update(self, guild_id: int, run_id: int, **fields: Any) -> None:
        """Set columns of a run (progress, counts, pid, ...); JSON columns take Python values."""
        allowed = {"n_train", "n_eval", "step", "total_steps", "loss", "eta_s", "pid", "pid_started", "metrics",
                   "loss_history", "progress_message_id", "eval_loss", "baseline_eval_loss"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)} this way")
        for key in ("metrics", "loss_history"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k}=?" for k in fields)
        async with self.db.transaction() as conn:
            await conn.execute(f"UPDATE training_runs SET {sets} WHERE guild_id=? AND id=?",
                               (*fields.values(), guild_id, run_id))

    async def finish(self, guild_id: int, run_id: int, status: str, *, error: str | None = None,
                     gate_reason: str | None = None, eval_loss: float | None = None,
                     baseline_eval_loss: float | None = None, metrics: dict | None = None) -> bool:
        """Record the outcome once; a run already finished keeps its first outcome (returns False).

        A run that did not succeed keeps no servable version: a version it left `ready` (the
        process died between creating it and the flip) is marked removed in the same transaction."""
        if status not in FINAL:
            raise ValueError(f"{status!r} is not a final status")
        async with self.db.transaction() as conn:
            if status != "succeeded":
                await conn.execute(
                    "UPDATE model_versions SET status='removed' WHERE guild_id=? AND run_id=? AND status='ready'"
                    " AND EXISTS (SELECT 1 FROM training_runs WHERE id=? AND status IN ('queued','running'))",
                    (guild_id, run_id, run_id))
            cur = await conn.execute(
                "UPDATE training_runs SET status=?, error=?, gate_reason=?, eval_loss=COALESCE(?, eval_loss),"
                " baseline_eval_loss=COALESCE(?, baseline_eval_loss), metrics=COALESCE(?, metrics),"
                " finished_at=?, pid=NULL WHERE guild_id=? AND id=? AND status IN ('queued','running')",
                (status, error, gate_reason, eval_loss, baseline_eval_loss,
                 None if metrics is None else json.dumps(metrics), time.time(), guild_id, run_id))
            return cur.rowcount == 1

    async def request_cancel(self, guild_id: int, run_id: int) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE training_runs SET cancel_requested=1 WHERE guild_id=? AND id=? AND status IN "
                "('queued','running')", (guild_id, run_id))
            return cur.rowcount == 1

    async def cancel_requested(self, guild_id: int, run_id: int) -> bool:
        row = await self.db.fetchone(
            "SELECT cancel_requested FROM training_runs WHERE guild_id=? AND id=?", (guild_id, run_id))
        return bool(row and row["cancel_requested"])

    async def running(self) -> list[TrainingRun]:
        rows = await self.db.fetchall("SELECT * FROM training_runs WHERE status='running' ORDER BY id")
        return [_row_to_run(r) for r in rows]

    async def dead(self) -> list[TrainingRun]:
        """Running runs whose owner process is gone (or that no owner ever claimed as such: a claim
        made before owners were recorded). A live owner's run is never in this list."""
        return [run for run in await self.running() if run.owner is None or not run.owner.is_alive()]
