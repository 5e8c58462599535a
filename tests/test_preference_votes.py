"""Votes under /ask answers become preference examples (issue 15): the guild's thresholds and the
moderators' weight, one example per answer whatever the votes do later, /review showing the votes,
/forget of a voter or the asker, and what training reads (demonstrations apart from preferences)."""
from __future__ import annotations

import pytest

from storage.db import Database
from storage.examples import Forgotten
from storage.guild_settings import SettingError, parse_setting
from storage.records import GuildSettings
from tests.bot_harness import world  # noqa: F401  (world: pytest fixture)

GUILD = 7


@pytest.fixture
async def db(db_url):
    """On each engine (SQLite, PostgreSQL: tests/conftest.py)."""
    database = await Database.open(db_url)
    yield database
    await database.close()


async def answer(db: Database, question: str = "When is raid night?", text: str = "Raid night is Monday.",
                 asker: int = 100) -> int:
    return (await db.answers.record(GUILD, question=question, answer=text, version_id=None, latency_ms=5,
                                    user_id=asker, channel_id=55)).id


async def vote(db: Database, answer_id: int, user_id: int, kind: str, moderator: bool = False):
    await db.answers.vote(GUILD, answer_id, user_id, kind, moderator=moderator)
    return await db.examples.add_from_votes(GUILD, answer_id, await db.settings.get(GUILD))


async def test_two_net_downvotes_make_one_pending_undesirable_example(db):
    aid = await answer(db)
    assert await vote(db, aid, 1, "down") is None  # one 👎 is not enough
    assert await vote(db, aid, 2, "up") is None  # net 0
    assert await vote(db, aid, 3, "down") is None  # net -1
    made = await vote(db, aid, 4, "down")  # net -2
    assert made is not None and made.created
    example = made.example
    assert (example.label, example.status, example.source, example.answer_id) == ("undesirable", "pending", "vote",
                                                                                  aid)
    assert example.messages == [{"role": "user", "content": "When is raid night?"},
                                {"role": "assistant", "content": "Raid night is Monday."}]
    assert example.author_id == 100 and example.source_channel_id == 55
    # demonstrations and preferences are read apart
    assert await db.examples.approved(GUILD) == []
    assert await db.examples.preferences(GUILD, status="pending") == [example]
    assert (await db.examples.stats(GUILD))["source"] == {"vote": 1}


async def test_the_same_answer_never_makes_two_examples(db):
    aid = await answer(db)
    await vote(db, aid, 1, "up")
    first = await vote(db, aid, 2, "up")
    assert first.created and first.example.label == "desirable"
    again = await vote(db, aid, 3, "up")
    assert not again.created and again.example.id == first.example.id
    # the votes turning around later do not make a second (disliked) one either
    for user in (1, 2, 3):
        await db.answers.vote(GUILD, aid, user, "down")
    for user in (4, 5):
        flipped = await vote(db, aid, user, "down")
        assert not flipped.created and flipped.example.id == first.example.id
    assert len(await db.examples.list(GUILD)) == 1
    # a rejected one stays the answer's only one
    await db.examples.decide(GUILD, first.example.id, actor_id=9, approve=False)
    assert not (await vote(db, aid, 6, "down")).created


async def test_a_liked_answer_already_taught_as_is_still_becomes_a_preference(db):
    aid = await answer(db)
    taught = await db.examples.add(GUILD, [{"role": "user", "content": "When is raid night?"},
                                           {"role": "assistant", "content": "Raid night is Monday."}],
                                   source="reaction", author_id=9, answer_id=aid, status="approved")
    await vote(db, aid, 1, "up")
    made = await vote(db, aid, 2, "up")
    assert made.created and made.example.id != taught.example.id
    assert [e.id for e in await db.examples.approved(GUILD)] == [taught.example.id]
    assert taught.example.source == "reaction"


async def test_thresholds_and_moderator_weight_are_guild_settings(db):
    await db.settings.set(GUILD, preference_up_votes=3, moderator_vote_weight=2)
    aid = await answer(db)
    assert await vote(db, aid, 1, "up") is None
    assert await vote(db, aid, 2, "up") is None  # net 2 < 3
    assert (await db.answers.vote_tally(GUILD, aid, 2)).net == 2
    made = await vote(db, aid, 3, "up", moderator=True)  # 1 + 1 + 2
    assert made.created and made.example.label == "desirable"
    assert (await db.answers.vote_tally(GUILD, aid, 2)).net == 4

    other = await answer(db, "Who runs the wiki?", "Nobody does.")
    assert (await vote(db, other, 10, "down", moderator=True)).example.label == "undesirable"  # weight 2 alone
    assert (await db.answers.vote_tally(GUILD, other, 2)).down == 1
    assert (await db.answers.vote_tally(GUILD, other, 1)).net == -1


def test_vote_settings_are_checked_with_a_clear_message():
    assert parse_setting("preference_down_votes", "3") == 3
    assert GuildSettings(guild_id=1).preference_up_votes == 2
    with pytest.raises(SettingError, match="preference_up_votes.*from 1 to 1000"):
        parse_setting("preference_up_votes", "0")
    with pytest.raises(SettingError, match="moderator_vote_weight = 'x' is not valid: expected int"):
        parse_setting("moderator_vote_weight", "x")


async def test_forget_by_a_voter_wipes_the_example_and_their_votes(db):
    aid = await answer(db)
    await vote(db, aid, 1, "down")
    made = await vote(db, aid, 2, "down")
    assert await db.examples.forget_author(GUILD, 2) == Forgotten(examples=1, votes=1, questions=0)
    gone = await db.examples.get(GUILD, made.example.id)
    assert gone.status == "deleted" and gone.messages == []
    assert (await db.answers.tally(GUILD, aid))["down"] == 1  # the forgetting voter's vote is gone
    # and the answer does not come back through later votes
    assert not (await vote(db, aid, 3, "down")).created
    assert await db.examples.preferences(GUILD, status="pending") == []


async def test_forget_by_the_asker_wipes_the_example_and_later_votes_make_none(db):
    aid = await answer(db, asker=100)
    await vote(db, aid, 1, "up")
    made = await vote(db, aid, 2, "up")
    assert await db.examples.forget_author(GUILD, 100) == Forgotten(examples=1, votes=0, questions=1)
    assert (await db.examples.get(GUILD, made.example.id)).status == "deleted"
    # an answer of theirs with no example yet: its text is wiped, so votes make nothing from it
    later = await answer(db, "My other question?", "Some answer.", asker=100)
    await db.examples.forget_author(GUILD, 100)
    await vote(db, later, 1, "up")
    assert await vote(db, later, 2, "up") is None
    assert (await db.answers.get(GUILD, later)).question == ""


async def test_votes_in_discord_make_a_reviewable_preference_card(world):
    await world.configure(review_channel_id=world.review_channel.id)
    world.script("Where do we meet?", "We meet on the moon.")
    rec = await world.ask(world.member, "Where do we meet?")
    [message] = world.answer_messages(rec)
    aid = int(message.buttons[0]["custom_id"].split(":")[2])
    first = await world.fake.click(message, f"guildtune:answer:{aid}:down", world.other)
    assert "preference example" not in first.text and await world.examples() == []
    carol = world.fake.add_member(world.guild, "carol")
    second = await world.fake.click(message, f"guildtune:answer:{aid}:down", carol)
    [example] = await world.examples()
    assert f"preference example #{example.id}" in second.text and "disliked" in second.text
    assert example.label == "undesirable" and example.status == "pending"
    await world.fake.settle()
    [post] = [s.message for s in world.fake.sent_in(world.review_channel) if s.kind == "message"]
    card = post.embeds[0]
    assert card["title"] == f"Example #{example.id} · pending · 👎 disliked answer"
    assert "We meet on the moon." in card["description"]
    assert f"answer #{aid} · 👍 0 · 👎 2" in str(card["fields"])
    # a third click changes nothing: still one example
    await world.fake.click(message, f"guildtune:answer:{aid}:down", world.mod)
    assert len(await world.examples()) == 1
    review = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    assert review.message.embeds[0]["title"].endswith("👎 disliked answer")
    assert "👎 3" in str(review.message.embeds[0]["fields"])
    await world.fake.click(review, f"gt:review:approve:{example.id}:card")
    assert [e.id for e in await world.db.examples.preferences(world.guild.id)] == [example.id]
    assert await world.db.examples.approved(world.guild.id) == []


async def test_vote_settings_in_discord_and_a_moderator_vote_that_counts_double(world):
    ac = await world.fake.autocomplete(world.guild, world.channel, world.mod, "config set",
                                       {"setting": "vote", "value": ""}, focused="setting")
    shown = dict(c["name"].split(": ", 1) for c in ac.choices)
    assert {"preference_up_votes", "preference_down_votes", "moderator_vote_weight"} <= set(shown)
    assert "net 👍" in shown["preference_up_votes"] and "net 👎" in shown["preference_down_votes"]
    assert "moderator's 👍/👎 counts as" in shown["moderator_vote_weight"]  # each with its help text
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "config set",
                                 {"setting": "moderator_vote_weight", "value": "2"})
    assert rec.text == "`moderator_vote_weight` is now `2` (was `1`)."
    world.script("Who founded the guild?", "Nobody knows.")
    [message] = world.answer_messages(await world.ask(world.member, "Who founded the guild?"))
    aid = int(message.buttons[0]["custom_id"].split(":")[2])
    vote = await world.fake.click(message, f"guildtune:answer:{aid}:down", world.mod)
    [example] = await world.examples()
    assert f"preference example #{example.id}" in vote.text and example.label == "undesirable"


async def test_forget_in_discord_by_a_voter_and_by_the_asker(world):
    world.script("Where is the loot?", "Under the bridge.")
    [message] = world.answer_messages(await world.ask(world.member, "Where is the loot?"))
    aid = int(message.buttons[0]["custom_id"].split(":")[2])
    carol = world.fake.add_member(world.guild, "carol")
    for voter in (world.other, carol):
        await world.fake.click(message, f"guildtune:answer:{aid}:up", voter)
    [example] = await world.examples()
    assert example.label == "desirable"

    rec = await world.fake.slash(world.guild, world.channel, carol, "forget")
    assert "votes on answers" in rec.text and "questions you asked" in rec.text
    await world.fake.click(rec, f"guildtune:forget:{carol.id}:confirm")
    assert rec.text.startswith("Deleted 1 example you contributed and 1 vote. ")
    assert (await world.db.examples.get(world.guild.id, example.id)).status == "deleted"
    assert (await world.db.answers.tally(world.guild.id, aid))["up"] == 1

    rec = await world.fake.slash(world.guild, world.channel, world.member, "forget")
    await world.fake.click(rec, f"guildtune:forget:{world.member.id}:confirm")
    assert rec.text.startswith("Deleted 1 question you asked. ")
    assert (await world.db.answers.get(world.guild.id, aid)).question == ""
    # nothing of theirs is left: saying so, not "deleted 0"
    rec = await world.fake.slash(world.guild, world.channel, world.member, "forget")
    await world.fake.click(rec, f"guildtune:forget:{world.member.id}:confirm")
    assert rec.text == "You have no examples, votes or questions in this server: nothing to delete."
