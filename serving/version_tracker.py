"""Keeps each guild's active version in memory and follows the pointer the trainer flips.

The trainer runs in another process; storage is the only channel. This tracker polls the
`active_versions` table every few seconds and, when a guild's pointer moves, makes the server
load the new version *before* the in-memory pointer switches, so no answer waits on a load
or fails during the swap.

The model server may come later than the tracker: start-up connects the bot to Discord first and
makes the server in the background (converting the embedded GGUF can take a minute), then hands
it over with `attach`. Until then the tracker is not `ready` and /ask says it is warming up.
"""
from __future__ import annotations

import asyncio
import logging

from serving.protocol import ModelServer, ModelServerError
from storage.db import Database
from storage.records import ModelVersion

log = logging.getLogger(__name__)


class ActiveVersionTracker:
    def __init__(self, db: Database, server: ModelServer | None = None, poll_s: float = 3.0):
        self.db = db
        self.server = server
        self.poll_s = poll_s
        self._active: dict[int, ModelVersion] = {}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._ready = False

    @property
    def ready(self) -> bool:
        """Whether answers can be given: the server is there and the active versions are loaded."""
        return self._ready

    async def attach(self, server: ModelServer) -> None:
        """Hand over the model server once it exists; loads the active versions, then is ready."""
        self.server = server
        await self.refresh()
        self._ready = True

    def get(self, guild_id: int) -> ModelVersion | None:
        """The version /ask should use now (None: the base model)."""
        return self._active.get(guild_id)

    async def refresh(self) -> list[ModelVersion]:
        """Load and switch to every pointer that moved since the last look; returns the switched ones.
        Nothing to do before a server is attached."""
        if self.server is None:
            return []
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
        """Start following the pointers; with a server already given, load the active versions first."""
        if self.server is not None:
            await self.attach(self.server)
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
