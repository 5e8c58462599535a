"""Answers given by /ask and the feedback on them (votes are one per member and answer).

Votes are data: when an answer's net weighted votes reach the guild's threshold it becomes a
preference example (`preference_label` decides, `ExampleRepository.add_from_votes` stores it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.records import Answer, Feedback, GuildSettings

if TYPE_CHECKING:
    from storage.db import Database


def _row_to_answer(r: Any) -> Answer:
    return Answer(r["id"], r["guild_id"], r["channel_id"], r["user_id"], r["question"], r["answer"],
                  r["version_id"], r["latency_ms"], r["created_at"])


@dataclass(frozen=True)
class VoteTally:
    """An answer's votes: members' counts, and the net with moderators' votes weighted."""

    up: int
    down: int
    net: int  # Σ weight × (+1 for 👍, -1 for 👎), a moderator's weight from the guild setting


def preference_label(tally: VoteTally, gs: GuildSettings) -> str | None:
    """'desirable' at `preference_up_votes` net 👍, 'undesirable' at `preference_down_votes` net 👎, else None."""
    if tally.net >= gs.preference_up_votes:
        return "desirable"
    if -tally.net >= gs.preference_down_votes:
        return "undesirable"
    return None


class AnswerRepository:
    def __init__(self, db: "Database"):
        self.db = db

    async def record(self, guild_id: int, *, question: str, answer: str, version_id: int | None,
                     latency_ms: int, user_id: int | None = None, channel_id: int | None = None,
                     message_id: int | None = None) -> Answer:
        async with self.db.transaction() as conn:
            created = await conn.fetchone(
                "INSERT INTO answers (guild_id, channel_id, user_id, question, answer, version_id, latency_ms,"
                " created_at, message_id) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
                (guild_id, channel_id, user_id, question, answer, version_id, latency_ms, time.time(), message_id))
        return await self.get(guild_id, created["id"])

    async def get(self, guild_id: int, answer_id: int) -> Answer | None:
        row = await self.db.fetchone("SELECT * FROM answers WHERE guild_id=? AND id=?", (guild_id, answer_id))
        return _row_to_answer(row) if row else None

    async def list(self, guild_id: int, limit: int = 50) -> list[Answer]:
        rows = await self.db.fetchall(
            "SELECT * FROM answers WHERE guild_id=? ORDER BY id DESC LIMIT ?", (guild_id, limit))
        return [_row_to_answer(r) for r in rows]

    async def vote(self, guild_id: int, answer_id: int, user_id: int, kind: str, *, moderator: bool = False) -> str:
        """Record 👍/👎. Returns 'new', 'changed' or 'same' (clicking twice changes nothing).
        `moderator`: the voter moderates this server now (their vote may weigh more)."""
        if kind not in ("up", "down"):
            raise ValueError(f"vote kind must be up or down, not {kind!r}")
        if await self.get(guild_id, answer_id) is None:
            raise LookupError(f"There is no answer #{answer_id} in this server.")
        async with self.db.transaction() as conn:
            row = await self.db.fetchone(
                "SELECT id, kind FROM feedback WHERE answer_id=? AND user_id=? AND kind IN ('up','down')",
                (answer_id, user_id))
            if row is None:
                await conn.execute(
                    "INSERT INTO feedback (guild_id, answer_id, user_id, kind, created_at, moderator)"
                    " VALUES (?,?,?,?,?,?)", (guild_id, answer_id, user_id, kind, time.time(), int(moderator)))
                return "new"
            if row["kind"] == kind:
                return "same"
            await conn.execute("UPDATE feedback SET kind=?, created_at=?, moderator=? WHERE id=?",
                               (kind, time.time(), int(moderator), row["id"]))
            return "changed"

    async def record_correction(self, guild_id: int, answer_id: int, user_id: int, example_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO feedback (guild_id, answer_id, user_id, kind, example_id, created_at)"
                " VALUES (?,?,?,?,?,?)", (guild_id, answer_id, user_id, "correction", example_id, time.time()))

    async def feedback(self, guild_id: int, answer_id: int) -> list[Feedback]:
        rows = await self.db.fetchall(
            "SELECT * FROM feedback WHERE guild_id=? AND answer_id=? ORDER BY id", (guild_id, answer_id))
        return [Feedback(r["id"], r["guild_id"], r["answer_id"], r["user_id"], r["kind"], r["example_id"],
                         r["created_at"]) for r in rows]

    async def tally(self, guild_id: int, answer_id: int) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT kind, COUNT(*) AS n FROM feedback WHERE guild_id=? AND answer_id=? GROUP BY kind",
            (guild_id, answer_id))
        return {"up": 0, "down": 0, "correction": 0} | {r["kind"]: r["n"] for r in rows}

    async def vote_tally(self, guild_id: int, answer_id: int, moderator_weight: int = 1) -> VoteTally:
        """👍/👎 counts and the net with each moderator's vote counted `moderator_weight` times."""
        row = await self.db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN kind='up' THEN 1 ELSE 0 END), 0) AS up,"
            " COALESCE(SUM(CASE WHEN kind='down' THEN 1 ELSE 0 END), 0) AS down,"
            " COALESCE(SUM((CASE WHEN kind='up' THEN 1 ELSE -1 END) * (CASE WHEN moderator=1 THEN ? ELSE 1 END)), 0)"
            " AS net FROM feedback WHERE guild_id=? AND answer_id=? AND kind IN ('up','down')",
            (moderator_weight, guild_id, answer_id))
        return VoteTally(int(row["up"]), int(row["down"]), int(row["net"]))
