"""Keeps each guild's active version in memory and follows the pointer the trainer flips.

The trainer runs in another process; storage is the only channel. This tracker polls the
`active_versions` table every few seconds and, when a guild's pointer moves, makes the server
load the new version *before* the in-memory pointer switches, so no answer waits on a load
or fails during the swap.
"""
from __future__ import annotations

import asyncio
import logging

from serving.protocol import ModelServer, ModelServerError
from storage.db import Database
from storage.records import ModelVersion

log = logging.getLogger(__name__)


class ActiveVersionTracker:
    def __init__(self, db: Database, server: ModelServer, poll_s: float = 3.0):
        self.db = db
        self.server = server
        self.poll_s = poll_s
        self._active: dict[int, ModelVersion] = {}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def get(self, guild_id: int) -> ModelVersion | None:
        """The version /ask should use now (None: the base model)."""
        return self._active.get(guild_id)

    async def refresh(self) -> list[ModelVersion]:
        """Load and switch to every pointer that moved since the last look; returns the switched ones."""
        async with self._lock:
            switched = []
            pointers = await self.db.versions.all_active()
            for guild_id, version_id in pointers.items():
                current = self._active.get(guild_id)
                if current is not None and current.id == version_id:
                    continue
                version = await self.db.versions.get(guild_id, version_id)
                if version is None:
                    continue
                try:
                    await self.server.publish(version)
                    await self.server.preload(version)
                except ModelServerError as exc:
                    log.error("guild %s: cannot load v%s yet (%s); still answering with the previous one",
                              guild_id, version.number, exc)
                    continue
                self._active[guild_id] = version
                switched.append(version)
                log.info("guild %s now answers with v%s", guild_id, version.number)
            for guild_id in set(self._active) - set(pointers):
                del self._active[guild_id]
            return switched

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="active-version-tracker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # wait until it has really stopped
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # a bad poll must not stop the watching
                log.exception("active-version refresh failed")
