"""Model versions and the active-version pointer per guild. Flipping the pointer is the hot swap."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from storage.records import ModelVersion

if TYPE_CHECKING:
    from storage.db import Database


def _row_to_version(r: Any) -> ModelVersion:
    return ModelVersion(r["id"], r["guild_id"], r["number"], r["run_id"], r["tag"], r["adapter_path"],
                        r["base_model"], json.loads(r["metrics"]), r["status"], r["n_examples"],
                        r["created_at"], r["activated_at"])


class UnknownVersion(LookupError):
    """No version with this id in this guild."""

    def __init__(self, version_id: int):
        super().__init__(f"There is no version id {version_id} in this server.")
        self.version_id = version_id


class VersionRemoved(LookupError):
    """The version's model was removed from the model server: it can no longer be activated."""

    def __init__(self, number: int):
        super().__init__(f"Version v{number} was removed from the model server.")
        self.number = number


class VersionRepository:
    def __init__(self, db: "Database"):
        self.db = db

    async def create(self, guild_id: int, *, run_id: int | None, adapter_path: str, base_model: str,
                     metrics: dict, n_examples: int) -> ModelVersion:
        """A `ready` version. Only a run still running may create one: a run already marked failed
        (its owner died, say) keeps no version, even if its job process trained on."""
        async with self.db.transaction() as conn:
            if run_id is not None:
                run = await self.db.fetchone(
                    "SELECT status FROM training_runs WHERE guild_id=? AND id=?", (guild_id, run_id))
                if run is None or run["status"] != "running":
                    raise LookupError(f"run {run_id} is {run['status'] if run else 'unknown'}, not running; "
                                      "its adapter does not become a version")
            row = await self.db.fetchone(
                "SELECT COALESCE(MAX(number), 0) + 1 AS n FROM model_versions WHERE guild_id=?", (guild_id,))
            created = await conn.fetchone(
                "INSERT INTO model_versions (guild_id, number, run_id, adapter_path, base_model, metrics, status,"
                " n_examples, created_at) VALUES (?,?,?,?,?,?,'ready',?,?) RETURNING id",
                (guild_id, row["n"], run_id, adapter_path, base_model, json.dumps(metrics), n_examples, time.time()))
        return await self.get(guild_id, created["id"])

    async def set_tag(self, guild_id: int, version_id: int, tag: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE model_versions SET tag=? WHERE guild_id=? AND id=?", (tag, guild_id, version_id))

    async def get(self, guild_id: int, version_id: int) -> ModelVersion | None:
        row = await self.db.fetchone("SELECT * FROM model_versions WHERE guild_id=? AND id=?", (guild_id, version_id))
        return _row_to_version(row) if row else None

    async def by_number(self, guild_id: int, number: int) -> ModelVersion | None:
        row = await self.db.fetchone(
            "SELECT * FROM model_versions WHERE guild_id=? AND number=?", (guild_id, number))
        return _row_to_version(row) if row else None

    async def list(self, guild_id: int, limit: int = 25) -> list[ModelVersion]:
        rows = await self.db.fetchall(
            "SELECT * FROM model_versions WHERE guild_id=? ORDER BY number DESC LIMIT ?", (guild_id, limit))
        return [_row_to_version(r) for r in rows]

    async def active(self, guild_id: int) -> ModelVersion | None:
        row = await self.db.fetchone(
            "SELECT v.* FROM active_versions a JOIN model_versions v ON v.id=a.version_id "
            "WHERE a.guild_id=? AND v.guild_id=?", (guild_id, guild_id))
        return _row_to_version(row) if row else None

    async def activate(self, guild_id: int, version_id: int) -> ModelVersion:
        """The hot swap: one transaction moves the pointer and the statuses together."""
        async with self.db.transaction() as conn:
            target = await self.get(guild_id, version_id)
            if target is None:
                raise UnknownVersion(version_id)
            if target.status == "removed":
                raise VersionRemoved(target.number)
            now = time.time()
            await conn.execute("UPDATE model_versions SET status='retired' WHERE guild_id=? AND status='active'",
                               (guild_id,))
            await conn.execute("UPDATE model_versions SET status='active', activated_at=? WHERE guild_id=? AND id=?",
                               (now, guild_id, version_id))
            await conn.execute(
                "INSERT INTO active_versions (guild_id, version_id, activated_at) VALUES (?,?,?) "
                "ON CONFLICT(guild_id) DO UPDATE SET version_id=excluded.version_id, activated_at=excluded.activated_at",
                (guild_id, version_id, now))
        return await self.get(guild_id, version_id)

    async def kept(self, guild_id: int) -> list[ModelVersion]:
        """The good versions, newest first: those that have served (active or retired). Pruning
        counts only these, so a `ready` version never pushes out the last one to roll back to."""
        rows = await self.db.fetchall(
            "SELECT * FROM model_versions WHERE guild_id=? AND status IN ('active','retired') ORDER BY number DESC",
            (guild_id,))
        return [_row_to_version(r) for r in rows]

    async def rollback_target(self, guild_id: int) -> ModelVersion | None:
        """The version active before the current one: the newest retired one."""
        row = await self.db.fetchone(
            "SELECT * FROM model_versions WHERE guild_id=? AND status='retired' "
            "ORDER BY activated_at DESC, number DESC LIMIT 1", (guild_id,))
        return _row_to_version(row) if row else None

    async def mark_removed(self, guild_id: int, version_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE model_versions SET status='removed' WHERE guild_id=? AND id=? AND status<>'active'",
                (guild_id, version_id))

    async def all_active(self) -> dict[int, int]:
        """guild id → active version id, for the bot's watcher that notices a swap made by the trainer."""
        rows = await self.db.fetchall("SELECT guild_id, version_id FROM active_versions")
        return {r["guild_id"]: r["version_id"] for r in rows}

    async def for_run(self, guild_id: int, run_id: int) -> ModelVersion | None:
        """The version a training run produced, if it got that far."""
        row = await self.db.fetchone(
            "SELECT * FROM model_versions WHERE guild_id=? AND run_id=?", (guild_id, run_id))
        return _row_to_version(row) if row else None

    async def adapter_paths(self, guild_id: int) -> set[str]:
        """Every adapter folder a servable version of this guild points at (the daemon deletes the
        others at start, removed versions' folders included)."""
        rows = await self.db.fetchall(
            "SELECT adapter_path FROM model_versions WHERE guild_id=? AND status<>'removed'", (guild_id,))
        return {r["adapter_path"] for r in rows}
