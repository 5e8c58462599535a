"""Answers given by /ask and the feedback on them (votes are one per member and answer)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from storage.records import Answer, Feedback

if TYPE_CHECKING:
    from storage.db import Database


def _row_to_answer(r: Any) -> Answer:
    return Answer(r["id"], r["guild_id"], r["channel_id"], r["user_id"], r["question"], r["answer"],
                  r["version_id"], r["latency_ms"], r["created_at"])


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

    async def vote(self, guild_id: int, answer_id: int, user_id: int, kind: str) -> str:
        """Record 👍/👎. Returns 'new', 'changed' or 'same' (clicking twice changes nothing)."""
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
                    "INSERT INTO feedback (guild_id, answer_id, user_id, kind, created_at) VALUES (?,?,?,?,?)",
                    (guild_id, answer_id, user_id, kind, time.time()))
                return "new"
            if row["kind"] == kind:
                return "same"
            await conn.execute("UPDATE feedback SET kind=?, created_at=? WHERE id=?", (kind, time.time(), row["id"]))
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
