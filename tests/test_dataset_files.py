"""Import and export of a guild's examples through their one storage path (storage/dataset_files.py), as
users run them: `guildtune dataset import/export` and the bot's `/dataset export`. Voted answers never
leave as demonstrations (a disliked answer would be taught); `kto` exports them as TRL's
unpaired-preference rows, which `datasets` and TRL load as such."""
from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from guildtune.cli import app
from tests.bot_harness import world  # noqa: F401  (pytest fixture)

GUILD = 31
TAUGHT = [{"instruction": "When is raid night?", "output": "Raid night is Monday at 8 pm."},
          {"instruction": "Who runs the wiki?", "output": "Mira runs the wiki."}]
#: (question, answer, vote) of /ask answers the members voted on
VOTED = [("Where do we meet?", "We meet in the tavern channel.", "up"),
         ("What is the guild tag?", "The guild tag is [WOLF].", "down")]
PENDING_VOTED = ("Is there a dress code?", "Everyone must wear red hats.", "down")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])
    return invoke


def cast_votes(voted, approve: bool) -> None:
    """Answers recorded and voted on through the storage path the bot uses; approved as in /review."""
    from guildtune.settings import load_settings
    from storage.db import Database

    async def go():
        db = await Database.open(load_settings().db_path)
        try:
            gs = await db.settings.get(GUILD)
            for question, text, kind in voted:
                aid = (await db.answers.record(GUILD, question=question, answer=text, version_id=None, latency_ms=3,
                                               user_id=500)).id
                for voter in (1, 2):
                    await db.answers.vote(GUILD, aid, voter, kind)
                made = await db.examples.add_from_votes(GUILD, aid, gs)
                if approve:
                    await db.examples.decide(GUILD, made.example.id, actor_id=9, approve=True)
        finally:
            await db.close()

    asyncio.run(go())


def test_cli_exports_demonstrations_only_and_votes_as_kto_rows(cli, tmp_path):
    import datasets
    from trl.data_utils import is_conversational

    taught = tmp_path / "taught.json"
    taught.write_text(json.dumps(TAUGHT), encoding="utf-8")
    assert cli("dataset", "import", "--guild", GUILD, "--approve", taught).exit_code == 0
    cast_votes(VOTED, approve=True)
    cast_votes([PENDING_VOTED], approve=False)

    for status in ("approved", "all"):
        out = cli("dataset", "export", "--guild", GUILD, "--status", status)
        assert out.exit_code == 0, out.output
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["messages"][1]["content"] for r in rows] == [t["output"] for t in TAUGHT]
        assert not any(text in out.stdout for _, text, _ in VOTED + [PENDING_VOTED])
    alpaca = json.loads(cli("dataset", "export", "--guild", GUILD, "--format", "alpaca").stdout)
    assert [r["output"] for r in alpaca] == [t["output"] for t in TAUGHT]

    votes = tmp_path / "votes.jsonl"
    out = cli("dataset", "export", "--guild", GUILD, "--format", "kto", "-o", votes)
    assert out.exit_code == 0 and f"Wrote 2 approved voted answer(s) to {votes}" in " ".join(out.output.split())
    loaded = datasets.load_dataset("json", data_files=str(votes), split="train")
    assert loaded.column_names == ["prompt", "completion", "label"]
    assert loaded["label"] == [True, False]
    assert loaded[1]["prompt"] == [{"role": "user", "content": VOTED[1][0]}]
    assert loaded[1]["completion"] == [{"role": "assistant", "content": VOTED[1][1]}]
    assert all(is_conversational(row) for row in loaded)
    every = cli("dataset", "export", "--guild", GUILD, "--format", "kto", "--status", "all").stdout.splitlines()
    assert [json.loads(r)["completion"][0]["content"] for r in every] == [v[1] for v in VOTED + [PENDING_VOTED]]

    # a KTO file is not demonstrations: importing it is refused, and nothing is written
    again = cli("dataset", "import", "--guild", GUILD + 1, votes)
    assert again.exit_code == 1 and "Can't tell the format" in again.output and "Nothing was imported" in again.output
    assert cli("dataset", "export", "--guild", GUILD + 1, "--status", "all").stdout == ""
    bad = cli("dataset", "export", "--guild", GUILD, "--format", "dpo")
    assert bad.exit_code == 2 and "messages, alpaca, sharegpt, kto" in bad.output
    assert cli("dataset", "export", "--guild", GUILD, "--status", "maybe").exit_code == 2


def test_cli_import_names_every_row_storage_refuses_then_skips_them(cli, tmp_path):
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": "x" * 9000},
            {"instruction": "q3", "output": "a3"}, {"instruction": "q4", "output": "y" * 8001}]
    f = tmp_path / "long.json"
    f.write_text(json.dumps(rows), encoding="utf-8")
    refused = cli("dataset", "import", "--guild", 3, f)
    assert refused.exit_code == 1 and "2 invalid row(s):" in refused.output
    lines = [line.strip() for line in refused.output.splitlines()]
    assert any(line.startswith("long.json") and "9,000 characters; the limit is 8,000" in line for line in lines)
    assert any(line.startswith("long.json") and "8,001 characters" in line for line in lines)
    assert "Nothing was imported" in refused.output and "--skip-invalid" in refused.output
    assert cli("dataset", "export", "--guild", 3, "--status", "all").stdout == ""
    done = cli("dataset", "import", "--guild", 3, "--skip-invalid", f)
    assert done.exit_code == 0 and "Imported 2 example(s) as pending into guild 3" in done.output
    assert "Skipped 2 invalid row(s):" in done.output and "9,000 characters" in done.output
    out = cli("dataset", "export", "--guild", 3, "--status", "pending").stdout.splitlines()
    assert [json.loads(r)["messages"][0]["content"] for r in out] == ["q1", "q3"]


async def vote_in_discord(world, question: str, reply: str, kind: str) -> int:
    """/ask, two members vote, the moderator approves the preference example from /review."""
    world.script(question, reply)
    [message] = world.answer_messages(await world.ask(world.member, question))
    aid = int(message.buttons[0]["custom_id"].split(":")[2])
    voter = world.fake.add_member(world.guild, f"voter{aid}")
    for user in (world.other, voter):
        await world.fake.click(message, f"guildtune:answer:{aid}:{kind}", user)
    [example] = [e for e in await world.examples() if e.answer_id == aid and e.label]
    review = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    await world.fake.click(review, f"gt:review:approve:{example.id}:card")
    return example.id


async def test_dataset_export_in_discord_keeps_votes_out_of_demonstrations(world):
    gid = world.guild.id
    await world.db.examples.add(gid, [{"role": "user", "content": TAUGHT[0]["instruction"]},
                                      {"role": "assistant", "content": TAUGHT[0]["output"]}],
                                source="teach", author_id=world.member.id, status="approved")
    await vote_in_discord(world, VOTED[0][0], VOTED[0][1], "up")
    await vote_in_discord(world, VOTED[1][0], VOTED[1][1], "down")
    assert len(await world.db.examples.preferences(gid)) == 2

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export", {"status": "all"})
    assert rec.ephemeral and rec.text == "1 example(s) in messages format."
    (file,) = rec.response.attachments
    assert [json.loads(line) for line in file.data.decode().splitlines()] == [
        {"messages": [{"role": "user", "content": TAUGHT[0]["instruction"]},
                      {"role": "assistant", "content": TAUGHT[0]["output"]}]}]

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export", {"format": "kto"})
    assert rec.text == "2 approved voted answer(s) in kto format."
    (file,) = rec.response.attachments
    assert file.filename == f"guildtune-{gid}-approved-kto.jsonl"
    rows = [json.loads(line) for line in file.data.decode().splitlines()]
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [(VOTED[0][1], True),
                                                                          (VOTED[1][1], False)]
    assert rows[0]["prompt"] == [{"role": "user", "content": VOTED[0][0]}]

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export",
                                 {"format": "kto", "status": "rejected"})
    assert rec.text == "There are no rejected voted answers to export yet." and not rec.response.attachments
