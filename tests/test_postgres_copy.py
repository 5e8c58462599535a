"""`guildtune db copy`: a SQLite database moved to PostgreSQL (and back) as a user runs it, every
table with its ids, counts verified, new ids after the copied ones, a non-empty target refused."""
import asyncio
import sqlite3

import pytest
from typer.testing import CliRunner

from guildtune.cli import app
from storage.copy import CopyError, copy_database
from storage.db import Database


def conv(q, a="a"):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


async def fill(path) -> None:
    """A small community's database, written through the repositories like the bot and trainer do."""
    db = await Database.open(path)
    big_guild = 1_100_000_000_000_000_001
    for guild in (1, big_guild):
        ids = [(await db.examples.add(guild, conv(f"q{i} of {guild}"), source="teach", author_id=100 + i)).example.id
               for i in range(5)]
        await db.examples.decide(guild, ids[0], actor_id=9, approve=True)
        await db.examples.decide(guild, ids[1], actor_id=9, approve=False, reason="off topic")
        await db.examples.vote(guild, ids[2], 55)
        await db.examples.add_review_post(guild, ids[3], channel_id=77, message_id=guild + 5000)
        await db.examples.forget_author(guild, 104)
        answer = await db.answers.record(guild, question="q?", answer="a!", version_id=None, latency_ms=12)
        await db.answers.vote(guild, answer.id, 8, "up")
        run, _, _ = await db.runs.enqueue(guild, trigger="retrain", requested_by=9)
        await db.runs.claim(guild, run.id)
        await db.runs.update(guild, run.id, loss_history=[[1, 2.5]], metrics={"train_s": 1.5})
        version = await db.versions.create(guild, run_id=run.id, adapter_path=f"/v/{guild}/1", base_model="b",
                                           metrics={"eval_loss": 1.25}, n_examples=1)  # the job, while running
        await db.runs.finish(guild, run.id, "succeeded", eval_loss=1.25)
        await db.versions.activate(guild, version.id)
        await db.settings.set(guild, temperature=0.3)
    await db.close()


async def dump(url) -> dict[str, list[tuple]]:
    db = await Database.open(url)
    try:
        out = {}
        for table in await db.engine.tables():
            names = sorted(c.name for c in await db.engine.columns(table))
            rows = await db.fetchall(f"SELECT {', '.join(names)} FROM {table}")
            out[table] = sorted(tuple(r) for r in rows)
        return out
    finally:
        await db.close()


async def add_one(url, text):
    db = await Database.open(url)
    await db.examples.add(42, conv(text), source="teach", author_id=1)
    await db.close()


async def prompts(url, guild):
    db = await Database.open(url)
    try:
        return [e.messages[0]["content"] for e in await db.examples.list(guild)]
    finally:
        await db.close()


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_db_copy_moves_every_table_with_its_ids(tmp_path, postgres_cluster, cli):
    source = tmp_path / "guildtune.db"
    asyncio.run(fill(source))
    url = asyncio.run(postgres_cluster.create_database())
    result = cli("db", "copy", "--from", f"sqlite:///{source}", "--to", url)
    assert result.exit_code == 0, result.output
    assert "every count matches the source" in result.output and postgres_cluster.password not in result.output
    before, after = asyncio.run(dump(source)), asyncio.run(dump(url))
    assert after == before
    assert {t for t, rows in before.items() if rows} >= {"examples", "example_events", "example_votes", "answers",
                                                          "feedback", "training_runs", "model_versions",
                                                          "active_versions", "guild_settings", "review_posts"}
    for table, rows in before.items():
        assert f"│ {table} " in result.output and f" {len(rows)} │" in result.output

    async def carry_on():  # the bot, pointed at the new database
        db = await Database.open(url)
        largest = max(r[0] for r in await db.fetchall("SELECT id FROM examples"))
        new = (await db.examples.add(1, conv("after the move"), source="teach", author_id=1)).example
        assert new.id == largest + 1  # the id sequence was moved past the copied ids
        assert (await db.versions.active(1)).adapter_path == "/v/1/1"
        assert (await db.settings.get(1)).temperature == 0.3
        run, _, _ = await db.runs.enqueue(1, trigger="retrain")
        assert run.id == 3
        await db.close()

    asyncio.run(carry_on())

    back = tmp_path / "back.db"  # and back again
    assert cli("db", "copy", "--from", url, "--to", back).exit_code == 0
    assert asyncio.run(dump(back)) == asyncio.run(dump(url))
    asyncio.run(postgres_cluster.drop_database(url))


def test_db_copy_refuses_a_non_empty_target_unless_replace(tmp_path, postgres_cluster, cli):
    source = tmp_path / "guildtune.db"
    asyncio.run(fill(source))
    url = asyncio.run(postgres_cluster.create_database())
    asyncio.run(add_one(url, "already here"))
    refused = cli("db", "copy", "--from", source, "--to", url)
    assert refused.exit_code == 1
    assert "not empty: example_events (1), examples (1)" in refused.output and "--replace" in refused.output
    assert asyncio.run(prompts(url, 42)) == ["already here"]  # untouched
    replaced = cli("db", "copy", "--from", source, "--to", url, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert asyncio.run(dump(url)) == asyncio.run(dump(source))
    asyncio.run(postgres_cluster.drop_database(url))


async def test_a_failed_copy_leaves_the_target_as_it_was(tmp_path, postgres_cluster):
    source = tmp_path / "guildtune.db"
    await fill(source)
    raw = sqlite3.connect(source)  # a row whose example is gone (possible in a file edited by hand)
    raw.execute("INSERT INTO example_votes (example_id, user_id, created_at) VALUES (999, 1, 0)")
    raw.commit()
    raw.close()
    url = await postgres_cluster.create_database()
    with pytest.raises(CopyError, match="copying table example_votes failed: .*Nothing was copied"):
        await copy_database(source, url)
    assert all(rows == [] for rows in (await dump(url)).values())
    await postgres_cluster.drop_database(url)


def test_db_copy_explains_bad_arguments(tmp_path, cli):
    bad = cli("db", "copy", "--from", "mysql://u:hunter2@h/db", "--to", tmp_path / "x.db")
    assert bad.exit_code == 2 and "mysql:// databases are not supported" in bad.output
    assert "hunter2" not in bad.output
    same = cli("db", "copy", "--from", tmp_path / "x.db", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert same.exit_code == 1 and "the same database" in same.output
