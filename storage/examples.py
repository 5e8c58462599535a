"""Examples: what members teach, what moderators decide, and the audit of every change.

Every method takes the guild id and filters on it, so no call can touch another guild's rows.
Status changes are single conditional UPDATEs inside a transaction: of two moderators deciding
the same example at once, exactly one wins and the other is told who decided first.

Preference examples (votes under /ask answers, issue 15) live in the same table with a `label`:
`approved()` returns the demonstrations SFT trains on, `preferences()` the labelled ones the KTO
stage sees. A preference example's content hash is kept apart from demonstrations' (a liked answer
may also have been taught as is), and there is at most one per answer.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from storage.conversation import InvalidConversation, content_hash, validate_conversation
from storage.records import EXAMPLE_SOURCES, PREFERENCE_LABELS, Conversation, Example, ExampleEvent, GuildSettings

if TYPE_CHECKING:
    from storage.db import Database


class ExampleError(Exception):
    """A refusal with a plain message (the bot adds where to look: bot/replies.py)."""


class UnknownExample(ExampleError, LookupError):
    """No example with this id in this guild."""

    def __init__(self, example_id: int):
        super().__init__(f"There is no example #{example_id} in this server.")
        self.example_id = example_id


@dataclass(frozen=True)
class AddResult:
    example: Example
    created: bool  # False: `example` is the existing duplicate

    @property
    def duplicate_of(self) -> Example | None:
        return None if self.created else self.example


@dataclass(frozen=True)
class Decision:
    """What `decide` did: `ok`, or why not (decided before, by whom; or the edit duplicates another example).
    bot/replies.py says it in words."""

    ok: bool
    example: Example
    #: not ok because the example was decided before: who decided it (None when unknown)
    decided_by: int | None = None
    #: not ok because the edited text duplicates this example
    duplicate_of: int | None = None


@dataclass(frozen=True)
class BulkAddResult:
    created: int
    duplicates: int
    #: (position from 1, problem) of each conversation left out by `add_many(skip_invalid=True)`
    invalid: tuple[tuple[int, str], ...] = ()


class InvalidConversations(InvalidConversation):
    """A bulk add refused: every invalid conversation, as (position from 1, problem), in `problems`."""

    def __init__(self, problems: list[tuple[int, str]]):
        self.problems = problems
        number, problem = problems[0]
        more = f" ({len(problems) - 1} more conversation(s) are invalid too)" if len(problems) > 1 else ""
        super().__init__(f"Conversation {number}: {problem}{more}")


@dataclass(frozen=True)
class Forgotten:
    """What `/forget` removed: examples wiped, 👍/👎 votes deleted, questions asked (with their answers) blanked."""
    examples: int
    votes: int
    questions: int


#: What a vote example's `source` column holds: V1's CHECK allows no 'vote' (see the V5 migration).
STORED_VOTE_SOURCE = "reaction"
VOTE_SOURCE = "vote"


def _row_to_example(row: Any) -> Example:
    label = row["label"]
    return Example(
        id=row["id"], guild_id=row["guild_id"], messages=json.loads(row["messages"]),
        source=VOTE_SOURCE if label is not None else row["source"],
        source_message_ids=json.loads(row["source_message_ids"]), author_id=row["author_id"],
        status=row["status"], content_hash=row["content_hash"], created_at=row["created_at"],
        updated_at=row["updated_at"], answer_id=row["answer_id"], source_channel_id=row["source_channel_id"],
        label=label,
    )


def _digest(clean: Conversation, label: str | None) -> str:
    """The dedup hash: a preference example's is apart from a demonstration with the same turns."""
    digest = content_hash(clean)
    return digest if label is None else f"pref:{digest}"


def _snapshot(example: Example, with_content: bool = True) -> dict[str, Any]:
    snap: dict[str, Any] = {"status": example.status}
    if with_content:
        snap["messages"] = example.messages
    return snap


class ExampleRepository:
    def __init__(self, db: "Database"):
        self.db = db

    async def get(self, guild_id: int, example_id: int) -> Example | None:
        row = await self.db.fetchone("SELECT * FROM examples WHERE guild_id=? AND id=?", (guild_id, example_id))
        return _row_to_example(row) if row else None

    async def require(self, guild_id: int, example_id: int) -> Example:
        example = await self.get(guild_id, example_id)
        if example is None:
            raise UnknownExample(example_id)
        return example

    async def add(
        self, guild_id: int, messages: Conversation, *, source: str, author_id: int | None,
        source_message_ids: Iterable[int] = (), status: str = "pending", answer_id: int | None = None,
        source_channel_id: int | None = None,
    ) -> AddResult:
        """Validate and insert; a duplicate (same normalised content) returns the existing example."""
        if source not in EXAMPLE_SOURCES:
            raise ValueError(f"unknown source {source!r}")
        if status not in ("pending", "approved"):
            raise ValueError(f"new examples are pending or approved, not {status!r}")
        clean = validate_conversation(messages)
        digest = content_hash(clean)
        async with self.db.transaction() as conn:
            existing = await self.db.fetchone(
                "SELECT * FROM examples WHERE guild_id=? AND content_hash=?", (guild_id, digest)
            )
            if existing:
                return AddResult(_row_to_example(existing), created=False)
            example = await self._insert(conn, guild_id, clean, digest, source, author_id,
                                         list(source_message_ids), status, answer_id, source_channel_id)
        return AddResult(example, created=True)

    async def add_many(
        self, guild_id: int, conversations: Iterable[Conversation], *, source: str,
        author_id: int | None, status: str = "pending", skip_invalid: bool = False,
    ) -> BulkAddResult:
        """All or nothing: every conversation is validated before the first row is written (any
        invalid one raises InvalidConversations naming them all, unless `skip_invalid` leaves them
        out and reports them), and the rows appear together (storage.bulk_import), without blocking
        other writers for long."""
        from storage.bulk_import import import_conversations

        if source not in EXAMPLE_SOURCES:
            raise ValueError(f"unknown source {source!r}")
        if status not in ("pending", "approved"):
            raise ValueError(f"new examples are pending or approved, not {status!r}")
        cleaned, invalid = [], []
        for i, conv in enumerate(conversations, 1):
            try:
                cleaned.append(validate_conversation(conv))
            except InvalidConversation as exc:
                invalid.append((i, str(exc)))
        if invalid and not skip_invalid:
            raise InvalidConversations(invalid)
        created, duplicates = await import_conversations(self.db, guild_id, cleaned, source=source,
                                                         author_id=author_id, status=status)
        return BulkAddResult(created, duplicates, tuple(invalid))

    async def _insert(self, conn, guild_id, clean, digest, source, author_id, message_ids, status, answer_id,
                      source_channel_id=None, label=None):
        now = time.time()
        stored_source = STORED_VOTE_SOURCE if label is not None else source
        row = await conn.fetchone(
            "INSERT INTO examples (guild_id, messages, source, source_message_ids, author_id, status,"
            " content_hash, answer_id, created_at, updated_at, source_channel_id, label)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (guild_id, json.dumps(clean, ensure_ascii=False), stored_source, json.dumps(message_ids), author_id,
             status, digest, answer_id, now, now, source_channel_id, label),
        )
        example = Example(row["id"], guild_id, clean, source, message_ids, author_id, status, digest,
                          now, now, answer_id, source_channel_id, label)
        await self._event(conn, example, author_id, "created", None, _snapshot(example), None)
        return example

    async def _event(self, conn, example: Example, actor_id, action, before, after, reason) -> None:
        await conn.execute(
            "INSERT INTO example_events (guild_id, example_id, actor_id, action, before, after, reason, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (example.guild_id, example.id, actor_id, action,
             None if before is None else json.dumps(before, ensure_ascii=False),
             None if after is None else json.dumps(after, ensure_ascii=False), reason, time.time()),
        )

    async def decide(
        self, guild_id: int, example_id: int, *, actor_id: int, approve: bool,
        reason: str | None = None, messages: Conversation | None = None,
    ) -> Decision:
        """Approve or reject a pending example (optionally with edited content, for Edit → approve)."""
        new_status = "approved" if approve else "rejected"
        clean = validate_conversation(messages) if messages is not None else None
        async with self.db.transaction() as conn:
            before = await self.require(guild_id, example_id)
            if before.status != "pending":
                return Decision(False, before, decided_by=await self._last_decider(guild_id, example_id))
            if clean is not None:
                digest = _digest(clean, before.label)
                clash = await self.db.fetchone(
                    "SELECT id FROM examples WHERE guild_id=? AND content_hash=? AND id<>?",
                    (guild_id, digest, example_id))
                if clash:
                    return Decision(False, before, duplicate_of=clash["id"])
                await conn.execute(
                    "UPDATE examples SET messages=?, content_hash=?, status=?, updated_at=? "
                    "WHERE guild_id=? AND id=? AND status='pending'",
                    (json.dumps(clean, ensure_ascii=False), digest, new_status, time.time(), guild_id, example_id))
            else:
                await conn.execute(
                    "UPDATE examples SET status=?, updated_at=? WHERE guild_id=? AND id=? AND status='pending'",
                    (new_status, time.time(), guild_id, example_id))
            after = await self.require(guild_id, example_id)
            action = ("edited_and_approved" if clean is not None else "approved") if approve else "rejected"
            await self._event(conn, after, actor_id, action, _snapshot(before), _snapshot(after), reason)
        return Decision(True, after)

    async def _last_decider(self, guild_id: int, example_id: int) -> int | None:
        row = await self.db.fetchone(
            "SELECT actor_id FROM example_events WHERE guild_id=? AND example_id=? AND action<>'created' "
            "ORDER BY id DESC LIMIT 1", (guild_id, example_id))
        return row["actor_id"] if row else None

    async def delete(self, guild_id: int, example_id: int, *, actor_id: int | None) -> Example:
        async with self.db.transaction() as conn:
            before = await self.require(guild_id, example_id)
            await self._wipe(conn, before, actor_id, "deleted")
        return await self.require(guild_id, example_id)

    async def add_from_votes(self, guild_id: int, answer_id: int, gs: GuildSettings) -> AddResult | None:
        """The answer as a pending preference example once its votes reach the guild's threshold.

        None while they do not (or the answer's text was forgotten); the existing example when the
        answer already made one (idempotent: votes changing later never make a second). The
        conversation is what was asked (the guild's system prompt is put back at training) and the
        answer; the author is the asker, so their /forget removes it, as a voter's does.
        """
        from storage.answers import preference_label

        answer = await self.db.answers.get(guild_id, answer_id)
        if answer is None:
            raise ExampleError(f"There is no answer #{answer_id} in this server.")
        existing = await self.db.fetchone(
            "SELECT * FROM examples WHERE guild_id=? AND answer_id=? AND label IS NOT NULL", (guild_id, answer_id))
        if existing:
            return AddResult(_row_to_example(existing), created=False)
        label = preference_label(await self.db.answers.vote_tally(guild_id, answer_id, gs.moderator_vote_weight), gs)
        if label is None:
            return None
        try:
            clean = validate_conversation([{"role": "user", "content": answer.question},
                                           {"role": "assistant", "content": answer.answer}])
        except InvalidConversation:
            return None  # wiped by /forget (or never storable): nothing to learn from
        digest = _digest(clean, label)
        async with self.db.transaction() as conn:
            existing = await self.db.fetchone(
                "SELECT * FROM examples WHERE guild_id=? AND ((answer_id=? AND label IS NOT NULL) OR content_hash=?)",
                (guild_id, answer_id, digest))
            if existing:
                return AddResult(_row_to_example(existing), created=False)
            example = await self._insert(conn, guild_id, clean, digest, VOTE_SOURCE, answer.user_id, [], "pending",
                                         answer_id, answer.channel_id, label)
        return AddResult(example, created=True)

    async def forget_author(self, guild_id: int, author_id: int) -> "Forgotten":
        """Privacy: wipe the content of every example this member contributed; the audit keeps
        that it happened, without the content. The next training run no longer sees them.

        Contributed includes votes: preference examples of answers they asked or voted on are wiped,
        their votes deleted, and the text of the answers they asked blanked, so later votes cannot
        bring the question back. Returns how many of each there were."""
        async with self.db.transaction() as conn:
            rows = await self.db.fetchall(
                "SELECT * FROM examples WHERE guild_id=? AND status<>'deleted' AND (author_id=? OR ("
                "label IS NOT NULL AND answer_id IN (SELECT answer_id FROM feedback WHERE guild_id=? AND user_id=? "
                "AND kind IN ('up','down'))))", (guild_id, author_id, guild_id, author_id))
            for row in rows:
                await self._wipe(conn, _row_to_example(row), author_id, "forgotten")
            votes = await conn.execute("DELETE FROM feedback WHERE guild_id=? AND user_id=? AND kind IN ('up','down')",
                                       (guild_id, author_id))
            asked = await conn.execute("UPDATE answers SET question='', answer='' WHERE guild_id=? AND user_id=?"
                                       " AND (question<>'' OR answer<>'')", (guild_id, author_id))
        return Forgotten(len(rows), votes.rowcount, asked.rowcount)

    async def _wipe(self, conn, example: Example, actor_id, action) -> None:
        await conn.execute(
            "UPDATE examples SET messages='[]', content_hash=?, status='deleted', updated_at=? "
            "WHERE guild_id=? AND id=?",
            (f"deleted:{example.id}", time.time(), example.guild_id, example.id))
        await conn.execute("DELETE FROM example_rewordings WHERE example_id=?", (example.id,))  # its text
        # The audit drops the content everywhere for this example, not only in the new event.
        await conn.execute(
            "UPDATE example_events SET before=NULL, after=NULL WHERE guild_id=? AND example_id=?",
            (example.guild_id, example.id))
        await self._event(conn, example, actor_id, action, {"status": example.status}, {"status": "deleted"}, None)

    async def list(self, guild_id: int, *, status: str | None = None, limit: int | None = None) -> list[Example]:
        sql = "SELECT * FROM examples WHERE guild_id=?"
        params: list[Any] = [guild_id]
        if status:
            sql += " AND status=?"
            params.append(status)
        sql += " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [_row_to_example(r) for r in await self.db.fetchall(sql, tuple(params))]

    async def approved(self, guild_id: int) -> list[Example]:
        """The approved demonstrations (what SFT trains on); preference examples are `preferences()`."""
        return [e for e in await self.list(guild_id, status="approved") if e.label is None]

    async def preferences(self, guild_id: int, *, status: str = "approved") -> list[Example]:
        """Preference examples (votes) with this status, in id order: what the KTO stage sees."""
        rows = await self.db.fetchall(
            "SELECT * FROM examples WHERE guild_id=? AND status=? AND label IN (?, ?) ORDER BY id",
            (guild_id, status, *PREFERENCE_LABELS))
        return [_row_to_example(r) for r in rows]

    async def rewordings(self, guild_id: int, base: str) -> dict[int, tuple[str, list[str]]]:
        """{example id: (question hash, the base model's rewordings of that question)} kept for `base`."""
        rows = await self.db.fetchall(
            "SELECT r.example_id, r.question_hash, r.rewordings FROM example_rewordings r "
            "JOIN examples e ON e.id = r.example_id WHERE e.guild_id=? AND r.base=? AND e.status<>'deleted'",
            (guild_id, base))
        return {r["example_id"]: (r["question_hash"], json.loads(r["rewordings"])) for r in rows}

    async def save_rewordings(self, guild_id: int, base: str, found: dict[int, tuple[str, list[str]]]) -> None:
        """Keep `found` (as `rewordings` returns it) for the guild's live examples; others are skipped."""
        if not found:
            return
        async with self.db.transaction() as conn:
            for example_id, (question_hash, texts) in found.items():
                await conn.execute(
                    "INSERT INTO example_rewordings (example_id, base, question_hash, rewordings) SELECT ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM examples WHERE id=? AND guild_id=? AND status<>'deleted')"
                    " ON CONFLICT (example_id, base) DO UPDATE SET question_hash=excluded.question_hash,"
                    " rewordings=excluded.rewordings",
                    (example_id, base, question_hash, json.dumps(texts, ensure_ascii=False), example_id, guild_id))

    async def next_pending(self, guild_id: int, *, after_id: int = 0) -> tuple[Example | None, int]:
        """The oldest pending example with id > after_id (Skip moves on), and how many are pending."""
        row = await self.db.fetchone(
            "SELECT * FROM examples WHERE guild_id=? AND status='pending' AND id>? ORDER BY id LIMIT 1",
            (guild_id, after_id))
        count = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM examples WHERE guild_id=? AND status='pending'", (guild_id,))
        return (_row_to_example(row) if row else None), int(count["n"])

    async def find_by_source_messages(self, guild_id: int, source: str, message_ids: list[int]) -> Example | None:
        row = await self.db.fetchone(
            "SELECT * FROM examples WHERE guild_id=? AND source=? AND source_message_ids=? AND label IS NULL",
            (guild_id, source, json.dumps(message_ids)))
        return _row_to_example(row) if row else None

    async def vote(self, guild_id: int, example_id: int, user_id: int) -> bool:
        """Count a member's vote for an example once; True when it is new."""
        await self.require(guild_id, example_id)
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO example_votes (example_id, user_id, created_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                (example_id, user_id, time.time()))
            return cur.rowcount == 1

    async def votes(self, guild_id: int, example_id: int) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM example_votes v JOIN examples e ON e.id=v.example_id "
            "WHERE e.guild_id=? AND v.example_id=?", (guild_id, example_id))
        return int(row["n"])

    async def events(self, guild_id: int, example_id: int) -> list[ExampleEvent]:
        rows = await self.db.fetchall(
            "SELECT * FROM example_events WHERE guild_id=? AND example_id=? ORDER BY id", (guild_id, example_id))
        return [ExampleEvent(r["id"], r["guild_id"], r["example_id"], r["actor_id"], r["action"],
                             json.loads(r["before"]) if r["before"] else None,
                             json.loads(r["after"]) if r["after"] else None, r["reason"], r["created_at"])
                for r in rows]

    async def stats(self, guild_id: int) -> dict[str, dict[str, int]]:
        by_status = {r["status"]: r["n"] for r in await self.db.fetchall(
            "SELECT status, COUNT(*) AS n FROM examples WHERE guild_id=? GROUP BY status", (guild_id,))}
        by_source = {r["source"]: r["n"] for r in await self.db.fetchall(
            "SELECT CASE WHEN label IS NULL THEN source ELSE ? END AS source, COUNT(*) AS n FROM examples "
            "WHERE guild_id=? AND status<>'deleted' GROUP BY 1", (VOTE_SOURCE, guild_id))}
        return {"status": by_status, "source": by_source}

    async def fingerprint(self, guild_id: int) -> tuple:
        """Changes whenever any of the guild's examples does (every write sets `updated_at`): what a cache
        of the guild's taught answers (serving.prompting.GuildNotes) checks before it is reused."""
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n, MAX(updated_at) AS t, MAX(id) AS last FROM examples WHERE guild_id=?", (guild_id,))
        return int(row["n"]), row["t"], row["last"]

    async def approved_since(self, guild_id: int, since: float) -> int:
        """Approved examples decided after `since` (what the minimum-new-examples trigger counts)."""
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM examples WHERE guild_id=? AND status='approved' AND updated_at>?",
            (guild_id, since))
        return int(row["n"])

    async def add_review_post(self, guild_id: int, example_id: int, channel_id: int, message_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO review_posts (guild_id, example_id, channel_id, message_id, created_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (message_id) DO UPDATE SET guild_id=excluded.guild_id,"
                " example_id=excluded.example_id, channel_id=excluded.channel_id, created_at=excluded.created_at",
                (guild_id, example_id, channel_id, message_id, time.time()))

    async def example_for_review_post(self, guild_id: int, message_id: int) -> Example | None:
        row = await self.db.fetchone(
            "SELECT e.* FROM review_posts p JOIN examples e ON e.id=p.example_id "
            "WHERE p.guild_id=? AND e.guild_id=? AND p.message_id=?", (guild_id, guild_id, message_id))
        return _row_to_example(row) if row else None

    async def review_posts(self, guild_id: int, example_id: int) -> list[tuple[int, int]]:
        rows = await self.db.fetchall(
            "SELECT channel_id, message_id FROM review_posts WHERE guild_id=? AND example_id=?",
            (guild_id, example_id))
        return [(r["channel_id"], r["message_id"]) for r in rows]
