"""Storage: migrations, guild isolation, concurrency, the approval race, dedup and the audit,
on both engines (the `db_url` fixture: a SQLite file and a database on a real PostgreSQL server)."""
import asyncio

import pytest

from bot.replies import decision_text
from storage.conversation import InvalidConversation
from storage.db import LATEST_VERSION, Database, migrations
from storage.examples import ExampleError
from storage.ownership import Owner


def conv(q: str, a: str = "answer") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture
async def db(db_url):
    database = await Database.open(db_url)
    yield database
    await database.close()


async def test_pragmas_and_schema_version(tmp_path):
    db = await Database.open(tmp_path / "g.db")
    assert await db.schema_version() == LATEST_VERSION
    assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await db.fetchone("PRAGMA foreign_keys"))[0] == 1
    assert (await db.fetchone("PRAGMA busy_timeout"))[0] > 0
    await db.close()


async def test_migrations_are_idempotent(db_url):
    path = db_url
    first = await Database.open(path)
    await first.close()
    again = await Database.open(path)
    assert await again.migrate() == []
    assert await again.schema_version() == LATEST_VERSION
    await again.close()


@pytest.mark.parametrize("start", range(1, LATEST_VERSION))
async def test_upgrade_from_every_earlier_version_keeps_data(db_url, start):
    path = db_url
    old = await Database.open(path, migrate_to=start)
    assert await old.schema_version() == start
    async with old.transaction() as conn:  # rows written the way that version's schema allows
        await conn.execute(
            "INSERT INTO examples (guild_id, messages, source, author_id, status, content_hash, created_at,"
            " updated_at) VALUES (1, '[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
            "\"content\":\"a\"}]', 'teach', 7, 'approved', 'h1', 0, 0)")
        await conn.execute("INSERT INTO training_runs (guild_id, status, trigger, created_at) VALUES (1,'succeeded','cli',0)")
    await old.close()
    new = await Database.open(path)
    assert await new.schema_version() == LATEST_VERSION
    [example] = await new.examples.approved(1)
    assert example.messages[1]["content"] == "a" and example.author_id == 7
    [run] = await new.runs.list(1)
    assert run.status == "succeeded" and run.progress_message_id is None
    await new.close()


def test_migration_files_are_numbered_without_gaps():
    assert [v for v, _, _ in migrations()] == list(range(1, LATEST_VERSION + 1))


async def test_guilds_are_isolated(db):
    a = (await db.examples.add(1, conv("secret of guild one"), source="teach", author_id=5)).example
    await db.examples.add(2, conv("guild two"), source="teach", author_id=5)
    assert await db.examples.get(2, a.id) is None
    with pytest.raises(ExampleError, match="no example"):
        await db.examples.decide(2, a.id, actor_id=9, approve=True)
    assert (await db.examples.get(1, a.id)).status == "pending"
    assert [e.messages[0]["content"] for e in await db.examples.list(2)] == ["guild two"]
    # the same text in another guild is not a duplicate
    assert (await db.examples.add(2, conv("secret of guild one"), source="teach", author_id=5)).created
    assert (await db.examples.forget_author(2, 5)).examples == 2
    assert (await db.examples.get(1, a.id)).status == "pending"


async def test_two_hundred_concurrent_writers_lose_nothing(db_url):
    path = db_url
    dbs = [await Database.open(path) for _ in range(4)]  # several connections, like several processes
    await asyncio.gather(*(
        dbs[i % 4].examples.add(1, conv(f"question {i}"), source="teach", author_id=i) for i in range(200)))
    assert len(await dbs[0].examples.list(1)) == 200
    assert sorted(e.author_id for e in await dbs[1].examples.list(1)) == list(range(200))
    for d in dbs:
        await d.close()


async def test_two_moderators_racing_give_one_approval(db_url):
    path = db_url
    a, b = await Database.open(path), await Database.open(path)
    ex = (await a.examples.add(1, conv("race"), source="teach", author_id=3)).example
    results = await asyncio.gather(a.examples.decide(1, ex.id, actor_id=100, approve=True),
                                   b.examples.decide(1, ex.id, actor_id=200, approve=True))
    oks = [r for r in results if r.ok]
    losers = [r for r in results if not r.ok]
    assert len(oks) == 1 and len(losers) == 1
    winner = 100 if results[0].ok else 200
    assert losers[0].decided_by == winner and losers[0].example.status == "approved"
    assert decision_text(losers[0]) == f"Example #{ex.id} was already approved by <@{winner}>."
    events = [e.action for e in await a.examples.events(1, ex.id)]
    assert events == ["created", "approved"]
    await a.close()
    await b.close()


async def test_duplicate_teach_names_the_original(db):
    first = await db.examples.add(1, conv("How do I join?", "Click Join."), source="teach", author_id=1)
    again = await db.examples.add(1, conv("  how do I   JOIN? ", "click join."), source="teach", author_id=2)
    assert not again.created and again.duplicate_of.id == first.example.id
    assert len(await db.examples.list(1)) == 1


@pytest.mark.parametrize("bad, fragment", [
    (conv("", "x"), "prompt (message 1) is empty"),
    (conv("q", "   "), "response (message 2) is empty"),
    (conv("q", "x" * 9000), "9,000 characters; the limit is 8,000"),
    ([{"role": "user", "content": "q"}], "needs a prompt (user) and a response"),
    ([{"role": "bot", "content": "q"}], "use one of system, user, assistant"),
])
async def test_invalid_examples_are_refused_clearly(db, bad, fragment):
    with pytest.raises(InvalidConversation, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        await db.examples.add(1, bad, source="teach", author_id=1)
    assert await db.examples.list(1) == []


async def test_bulk_add_is_all_or_nothing(db):
    good = [conv(f"q{i}") for i in range(5)]
    with pytest.raises(InvalidConversation, match="Conversation 6"):
        await db.examples.add_many(1, good + [conv("", "x")], source="import", author_id=None)
    assert await db.examples.list(1) == []
    result = await db.examples.add_many(1, good + [conv("q1")], source="import", author_id=None, status="approved")
    assert (result.created, result.duplicates) == (5, 1)


async def test_edit_then_approve_and_audit_before_after(db):
    ex = (await db.examples.add(1, conv("q", "wrong"), source="teach", author_id=1)).example
    d = await db.examples.decide(1, ex.id, actor_id=50, approve=True, messages=conv("q", "right"))
    assert d.ok and d.example.messages[1]["content"] == "right"
    event = (await db.examples.events(1, ex.id))[-1]
    assert event.action == "edited_and_approved" and event.actor_id == 50
    assert event.before["messages"][1]["content"] == "wrong" and event.after["status"] == "approved"


async def test_forget_wipes_content_keeps_audit_without_content(db):
    ex = (await db.examples.add(1, conv("my secret", "x"), source="teach", author_id=42)).example
    await db.examples.decide(1, ex.id, actor_id=9, approve=True)
    assert (await db.examples.forget_author(1, 42)).examples == 1
    gone = await db.examples.get(1, ex.id)
    assert gone.status == "deleted" and gone.messages == []
    assert await db.examples.approved(1) == []
    events = await db.examples.events(1, ex.id)
    assert [e.action for e in events] == ["created", "approved", "forgotten"]
    assert all("my secret" not in str(e.before) + str(e.after) for e in events)
    stored = [r["messages"] + str(r["before"]) + str(r["after"]) for r in await db.fetchall(
        "SELECT e.messages, v.before, v.after FROM examples e JOIN example_events v ON v.example_id=e.id")]
    assert stored and not any("my secret" in text for text in stored)
    # the same text can be taught again afterwards
    assert (await db.examples.add(1, conv("my secret", "x"), source="teach", author_id=42)).created


async def test_votes_and_answers_are_idempotent(db):
    ans = await db.answers.record(1, question="q", answer="a", version_id=None, latency_ms=5, user_id=3)
    assert await db.answers.vote(1, ans.id, 7, "up") == "new"
    assert await db.answers.vote(1, ans.id, 7, "up") == "same"
    assert await db.answers.vote(1, ans.id, 7, "down") == "changed"
    assert await db.answers.tally(1, ans.id) == {"up": 0, "down": 1, "correction": 0}
    with pytest.raises(LookupError):
        await db.answers.vote(2, ans.id, 7, "up")


async def test_run_queue_and_orphans(db):
    run, place, created = await db.runs.enqueue(1, trigger="retrain", requested_by=9)
    assert created and place == 1
    again, _, created_again = await db.runs.enqueue(1, trigger="retrain")
    assert not created_again and again.id == run.id
    _, place2, _ = await db.runs.enqueue(2, trigger="retrain")
    assert place2 == 2
    claimed = await db.runs.claim_next()
    assert claimed.id == run.id and claimed.status == "running"
    assert await db.runs.queue_position(claimed) == 0
    assert claimed.owner == Owner.this_process() and claimed.owner.is_alive()
    assert await db.runs.dead() == []  # a live owner's run is not anyone else's to fail
    dead_owner = Owner(claimed.owner.host, claimed.owner.pid, claimed.owner.started - 3600)  # pid reused since
    other = await db.runs.claim_next(owner=dead_owner)
    assert [r.id for r in await db.runs.dead()] == [other.id]
    assert await db.runs.finish(2, other.id, "failed", error="died")
    assert not await db.runs.finish(2, other.id, "succeeded")  # first outcome stays


async def test_activate_is_one_pointer_flip(db):
    v1 = await db.versions.create(1, run_id=None, adapter_path="/a1", base_model="b", metrics={}, n_examples=3)
    v2 = await db.versions.create(1, run_id=None, adapter_path="/a2", base_model="b", metrics={}, n_examples=4)
    assert (v1.number, v2.number) == (1, 2)
    await db.versions.activate(1, v1.id)
    await db.versions.activate(1, v2.id)
    assert (await db.versions.active(1)).id == v2.id
    assert (await db.versions.rollback_target(1)).id == v1.id
    assert (await db.versions.get(1, v1.id)).status == "retired"
    assert await db.versions.active(2) is None
    with pytest.raises(LookupError):
        await db.versions.activate(2, v1.id)


async def test_two_processes_starting_at_once_migrate_once(db_url):
    first, second = await asyncio.gather(Database.open(db_url), Database.open(db_url))
    assert await first.schema_version() == await second.schema_version() == LATEST_VERSION
    assert await first.migrate() == [] and await second.migrate() == []
    await first.close()
    await second.close()


async def test_every_repository_query_answers_alike(db):
    """The queries the bot and the trainer make, with their answers, so each engine runs them all."""
    ex = [(await db.examples.add(5, conv(f"q{i}"), source="reaction", author_id=i, source_message_ids=[100 + i],
                                 source_channel_id=70)).example for i in range(3)]
    await db.examples.decide(5, ex[0].id, actor_id=9, approve=True)
    first, pending = await db.examples.next_pending(5)
    assert (first.id, pending) == (ex[1].id, 2)
    assert (await db.examples.next_pending(5, after_id=ex[1].id))[0].id == ex[2].id
    assert (await db.examples.find_by_source_messages(5, "reaction", [101])).id == ex[1].id
    assert await db.examples.vote(5, ex[1].id, 3) and not await db.examples.vote(5, ex[1].id, 3)
    assert await db.examples.votes(5, ex[1].id) == 1
    assert await db.examples.stats(5) == {"status": {"approved": 1, "pending": 2}, "source": {"reaction": 3}}
    assert await db.examples.approved_since(5, 0) == 1 and await db.examples.approved_since(5, 4e9) == 0
    await db.examples.add_review_post(5, ex[1].id, channel_id=8, message_id=800)
    await db.examples.add_review_post(5, ex[2].id, channel_id=8, message_id=800)  # the message now shows ex 2
    assert (await db.examples.example_for_review_post(5, 800)).id == ex[2].id
    assert await db.examples.review_posts(5, ex[2].id) == [(8, 800)] and await db.examples.review_posts(5, ex[1].id) == []
    assert (await db.examples.delete(5, ex[2].id, actor_id=9)).status == "deleted"
    assert [e.id for e in await db.examples.list(5, status="pending", limit=5)] == [ex[1].id]

    answer = await db.answers.record(5, question="q", answer="a", version_id=None, latency_ms=3, user_id=1)
    await db.answers.record_correction(5, answer.id, 2, ex[1].id)
    assert [f.kind for f in await db.answers.feedback(5, answer.id)] == ["correction"]
    assert [a.id for a in await db.answers.list(5)] == [answer.id]

    run, _, _ = await db.runs.enqueue(5, trigger="retrain")
    assert (await db.runs.current(5)).id == run.id and (await db.runs.by_id(run.id)).guild_id == 5
    assert await db.runs.request_cancel(5, run.id) and await db.runs.cancel_requested(5, run.id)
    assert await db.runs.finish(5, run.id, "failed", error="boom")
    run2, _, _ = await db.runs.enqueue(5, trigger="retrain")
    assert await db.runs.finish(5, run2.id, "failed", error="boom again")
    failures, at = await db.runs.consecutive_failures(5)
    assert failures == 2 and at == (await db.runs.get(5, run2.id)).finished_at
    assert (await db.runs.last_finished(5, "failed")).id == run2.id and await db.runs.last_finished(5, "succeeded") is None
    assert [r.id for r in await db.runs.list(5)] == [run2.id, run.id] and await db.runs.current(5) is None

    run3, _, _ = await db.runs.enqueue(5, trigger="retrain")
    assert (await db.runs.claim(5, run3.id)).status == "running"  # only a running run's adapter becomes a version
    version = await db.versions.create(5, run_id=run3.id, adapter_path="/a", base_model="b", metrics={"x": 1},
                                       n_examples=1)
    await db.versions.set_tag(5, version.id, "guildtune-5:v1")
    assert (await db.versions.by_number(5, 1)).tag == "guildtune-5:v1"
    assert (await db.versions.for_run(5, run3.id)).id == version.id
    await db.versions.activate(5, version.id)
    assert await db.versions.all_active() == {5: version.id}
    await db.versions.mark_removed(5, version.id)  # the active one is never marked removed
    assert [v.status for v in await db.versions.list(5)] == ["active"]
    assert await db.versions.adapter_paths(5) == {"/a"}

    await db.settings.set(5, temperature=0.2, schedule="daily:03:00")
    await db.settings.set(5, top_k=7)
    got = await db.settings.get(5)
    assert (got.temperature, got.schedule, got.top_k) == (0.2, "daily:03:00", 7)
    await db.settings.set(6, top_k=3)
    assert await db.settings.guild_ids() == [5, 6]
