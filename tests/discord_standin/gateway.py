"""The gateway websocket: HELLO, IDENTIFY (with Discord's privileged-intent check), READY,
GUILD_CREATE, heartbeats, RESUME, member chunks, and dispatch of events to the bot.

Frames go out as plain JSON text (discord.py only decompresses binary frames).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .fake import FakeDiscord

# Intent bits.
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = {GUILD_MEMBERS: "members", GUILD_PRESENCES: "presences", MESSAGE_CONTENT: "message_content"}

# Long, so that a spontaneous heartbeat never races with the sync pings in ``GatewaySession.sync``.
HEARTBEAT_INTERVAL_MS = 45_000


@dataclass(eq=False)
class GatewaySession:
    ws: web.WebSocketResponse
    intents: int = 0
    identified: bool = False
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    seq: int = 0
    heartbeats: int = 0  # op 1 frames received from the bot
    close_code: int | None = None
    _beat: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        await self.send({"op": 0, "t": event, "s": self.seq, "d": data})

    async def sync(self, timeout: float) -> None:
        """Return once the bot has read every frame sent so far.

        We ask for a heartbeat (op 1); discord.py answers while reading frames in order, so its
        answer proves the earlier frames were parsed and their event handlers scheduled.
        """
        async with self._beat:
            seen = self.heartbeats
        await self.send({"op": 1, "d": None})
        async with self._beat:
            await asyncio.wait_for(self._beat.wait_for(lambda: self.heartbeats > seen), timeout)


class Gateway:
    def __init__(self, fake: "FakeDiscord"):
        self.fake = fake
        self.sessions: list[GatewaySession] = []
        self.history: list[GatewaySession] = []  # every identified session, for RESUME
        self.close_codes: list[int] = []

    @property
    def live(self) -> list[GatewaySession]:
        return [s for s in self.sessions if s.identified and not s.ws.closed]

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        session = GatewaySession(ws=ws)
        self.sessions.append(session)
        try:
            await session.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                await self._on_frame(session, frame)
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
        return ws

    async def _close(self, session: GatewaySession, code: int, reason: str) -> None:
        session.close_code = code
        self.close_codes.append(code)
        await session.ws.close(code=code, message=reason.encode())

    async def _on_frame(self, session: GatewaySession, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            await session.send({"op": 11})
            async with session._beat:
                session.heartbeats += 1
                session._beat.notify_all()
        elif op == 2:
            await self._identify(session, d or {})
        elif op == 6:
            await self._resume(session, d or {})
        elif op == 8:
            await self._request_members(session, d or {})
        # op 3 (presence), op 4 (voice) need no answer.

    async def _identify(self, session: GatewaySession, d: dict[str, Any]) -> None:
        fake = self.fake
        if d.get("token") != fake._expected_token():
            await self._close(session, 4004, "Authentication failed.")
            return
        intents = int(d.get("intents", 0))
        for bit, name in PRIVILEGED.items():
            if intents & bit and name not in fake.privileged_intents:
                await self._close(session, 4014, "Disallowed intent(s).")
                return
        session.intents = intents
        session.identified = True
        self.history.append(session)
        user = fake.bot_user
        await session.dispatch("READY", {
            "v": 10,
            "user": {**user.payload(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in fake.guilds.values()],
            "session_id": session.session_id,
            "resume_gateway_url": fake.gateway_url,
            "session_type": "normal",
            "shard": [0, 1],
            "application": {"id": str(fake.application_id), "flags": fake.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["guildtune-standin"],
        })
        if intents & GUILDS:
            for guild in fake.guilds.values():
                await session.dispatch("GUILD_CREATE", guild.payload(
                    include_members=bool(intents & GUILD_MEMBERS), bot_user_id=user.id))

    async def _resume(self, session: GatewaySession, d: dict[str, Any]) -> None:
        if d.get("token") != self.fake._expected_token():
            await self._close(session, 4004, "Authentication failed.")
            return
        previous = next((s for s in self.history if s.session_id == d.get("session_id")), None)
        if previous is None:
            await session.send({"op": 9, "d": False})  # invalid session: the client identifies again
            return
        session.intents = previous.intents
        session.session_id = previous.session_id
        session.seq = int(d.get("seq") or previous.seq)
        session.identified = True
        await session.dispatch("RESUMED", {"_trace": ["guildtune-standin"]})

    async def _request_members(self, session: GatewaySession, d: dict[str, Any]) -> None:
        guild = self.fake.guilds.get(int(d.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        if d.get("user_ids"):
            wanted = {int(x) for x in d["user_ids"]}
            members = [m for m in members if m.user.id in wanted]
        elif d.get("query"):
            members = [m for m in members if m.user.name.lower().startswith(d["query"].lower())]
        limit = int(d.get("limit") or 0)
        if limit:
            members = members[:limit]
        await session.dispatch("GUILD_MEMBERS_CHUNK", {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            **({"nonce": d["nonce"]} if d.get("nonce") else {}),
        })

    async def dispatch(self, event: str, data: dict[str, Any], *, intent: int | None = None,
                       shape=None) -> int:
        """Send an event to every identified session whose intents include ``intent``.

        ``shape(session, data)`` may return a per-session payload (e.g. content blanked without the
        message-content intent). Returns how many sessions received it.
        """
        count = 0
        for session in self.live:
            if intent is not None and not session.intents & intent:
                continue
            payload = shape(session, data) if shape else data
            try:
                await session.dispatch(event, payload)
                count += 1
            except ConnectionResetError:
                continue
        return count

    async def sync(self, timeout: float) -> None:
        for session in self.live:
            try:
                await session.sync(timeout)
            except ConnectionResetError:
                continue

    async def close_all(self) -> None:
        for session in list(self.sessions):
            if not session.ws.closed:
                await session.ws.close(code=1001, message=b"stand-in shutting down")
