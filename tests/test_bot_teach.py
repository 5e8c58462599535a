"""/teach (options and modal), the "Teach as answer" message menu and the 📚 reaction capture,
driven through discord.py's own dispatch against the Discord stand-in."""
from __future__ import annotations

import logging

import pytest

from tests.bot_harness import BotWorld, start_world, world  # noqa: F401  (world: pytest fixture)
from tests.discord_standin.world import walk_components


def modal_fields(rec) -> dict[str, dict]:
    """custom_id -> text input payload of the modal a record opened."""
    return {c["custom_id"]: c for c in walk_components(rec.modal["components"]) if c.get("type") == 4}


def collect_pending(w: BotWorld) -> list:
    """Examples the bot announced with its `example_pending` event (what the review cog listens to)."""
    seen: list = []

    async def on_example_pending(example, channel_id=None):
        seen.append(example)

    w.bot.add_listener(on_example_pending, "on_example_pending")
    return seen


# ------------------------------------------------------------------------------------------ /teach
async def test_teach_by_member_is_pending_and_announced(world):
    pending = collect_pending(world)
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach",
                                 {"prompt": "When is raid night?", "response": "Fridays at nine.",
                                  "system": "Answer briefly."})
    assert rec.ephemeral
    assert "example #1" in rec.text and "pending" in rec.text
    [example] = await world.examples()
    assert example.status == "pending" and example.source == "teach"
    assert example.author_id == world.member.id
    assert example.messages == [{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": "When is raid night?"},
                                {"role": "assistant", "content": "Fridays at nine."}]
    await world.fake.settle()
    assert [e.id for e in pending] == [example.id]


async def test_a_pending_example_is_posted_in_the_review_channel(world):
    if "bot.cogs.review" not in world.extensions:
        pytest.skip("the review cog is not there yet")
    await world.configure(review_channel_id=world.review_channel.id)
    question = await world.fake.post_message(world.channel, world.other, "Is voice chat required?")
    reply = await world.fake.post_message(world.channel, world.member, "No, text is fine.", reference=question)
    await world.fake.react(reply, world.other, "📚")
    [post] = [s for s in world.fake.sent_in(world.review_channel) if s.kind == "message"]
    assert "Is voice chat required?" in post.text and "No, text is fine." in post.text
    assert f"/channels/{world.guild.id}/{world.channel.id}/{reply.id}" in post.text  # links to the source
    assert post.components and not post.pings
    await world.fake.slash(world.guild, world.channel, world.mod, "teach", {"prompt": "Mod?", "response": "Yes."})
    assert len([s for s in world.fake.sent_in(world.review_channel) if s.kind == "message"]) == 1  # approved


async def test_teach_by_moderator_follows_auto_approve_setting(world):
    pending = collect_pending(world)
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "teach",
                                 {"prompt": "Rules?", "response": "Be kind."})
    assert "approved" in rec.text
    assert (await world.examples())[0].status == "approved"

    await world.configure(auto_approve_moderators=False)
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "teach",
                                 {"prompt": "Spam?", "response": "No spam."})
    assert "pending" in rec.text
    assert [e.status for e in await world.examples()] == ["approved", "pending"]
    await world.fake.settle()
    assert len(pending) == 1  # only the pending one goes to review


async def test_teach_duplicate_names_the_original(world):
    await world.fake.slash(world.guild, world.channel, world.member, "teach",
                           {"prompt": "Where do we meet?", "response": "In #general."})
    rec = await world.fake.slash(world.guild, world.channel, world.other, "teach",
                                 {"prompt": "where do  we MEET?", "response": "in #general."})
    assert "duplicates example #1" in rec.text
    assert len(await world.examples()) == 1


async def test_teach_empty_text_gets_the_validators_message(world):
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach",
                                 {"prompt": "   ", "response": "Something."})
    assert rec.ephemeral
    assert rec.text.startswith("Not saved:") and "prompt" in rec.text and "empty" in rec.text
    assert await world.examples() == []


async def test_teach_option_length_is_limited_by_discord(world):
    # Discord's client refuses a string option over 6,000 characters; the bot's own limit (8,000
    # per message) is therefore never reached from /teach, and the modal stops at 4,000.
    with pytest.raises(ValueError, match="length"):
        await world.fake.slash(world.guild, world.channel, world.member, "teach",
                               {"prompt": "x" * 6001, "response": "y"})
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach")
    assert all(f["max_length"] == 4000 for f in modal_fields(rec).values())


async def test_teach_prompt_of_only_invisible_characters_is_refused(world):
    invisible = "\u200b\u2060\ufeff\u200e\u200f\u202e"
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach",
                                 {"prompt": invisible, "response": "Something."})
    assert rec.ephemeral and rec.text.startswith("Not saved:")
    assert "prompt" in rec.text and "invisible" in rec.text
    form = await world.fake.slash(world.guild, world.channel, world.member, "teach")
    done = await world.fake.submit_modal(form, {"prompt": "Fine question?", "response": "\u200b \u2060"})
    assert done.text.startswith("Not saved:") and "response" in done.text
    assert await world.examples() == []


async def test_teach_long_response_option_is_kept_whole_and_the_form_asks_only_the_rest(world):
    long_response = ("Step one: read the pinned rules. " * 200)[:5994]
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach", {"response": long_response})
    fields = modal_fields(rec)
    assert "response" not in fields  # not cut to 4,000 in a form field: left out of the form
    assert set(fields) == {"prompt", "system"}
    assert "response kept as typed" in fields["prompt"]["label"]
    assert "5,994 characters" in fields["prompt"]["placeholder"]
    done = await world.fake.submit_modal(rec, {"prompt": "How do I start?"})
    assert "example #1" in done.text
    [example] = await world.examples()
    assert example.messages == [{"role": "user", "content": "How do I start?"},
                                {"role": "assistant", "content": long_response.strip()}]
    assert len(example.messages[1]["content"]) == len(long_response.strip()) > 4000


async def test_teach_without_options_opens_a_multiline_modal(world):
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach")
    assert rec.response.is_modal
    fields = modal_fields(rec)
    assert set(fields) == {"prompt", "response", "system"}
    assert all(f["style"] == 2 for f in fields.values())  # paragraph: multi-line
    assert fields["system"]["required"] is False
    done = await world.fake.submit_modal(rec, {"prompt": "How do I join\nthe raid?",
                                               "response": "Sign up in #raids.\nThen show up."})
    assert "example #1" in done.text and done.ephemeral
    [example] = await world.examples()
    assert example.messages == [{"role": "user", "content": "How do I join\nthe raid?"},
                                {"role": "assistant", "content": "Sign up in #raids.\nThen show up."}]


async def test_teach_with_only_a_prompt_prefills_the_modal(world):
    rec = await world.fake.slash(world.guild, world.channel, world.member, "teach", {"prompt": "Half a thought"})
    fields = modal_fields(rec)
    assert fields["prompt"]["value"] == "Half a thought"
    done = await world.fake.submit_modal(rec, {"response": "The other half."})
    assert "example #1" in done.text
    assert (await world.examples())[0].messages[0]["content"] == "Half a thought"


# ------------------------------------------------------------------------------ Teach as answer
async def test_teach_as_answer_on_a_reply_prefills_and_saves(world):
    fake = world.fake
    question = await fake.post_message(world.channel, world.other, "How do I get the raider role?")
    answer = await fake.post_message(world.channel, world.member, "Ask a mod in #roles.", reference=question)
    rec = await fake.message_context_menu("Teach as answer", answer, world.member)
    fields = modal_fields(rec)
    assert fields["prompt"]["value"] == "How do I get the raider role?"
    assert fields["response"]["value"] == "Ask a mod in #roles."
    done = await fake.submit_modal(rec, {"response": "Ask a moderator in #roles; they add it."})
    assert "example #1" in done.text and "pending" in done.text
    [example] = await world.examples()
    assert example.source == "context_menu" and example.author_id == world.member.id
    assert example.source_message_ids == [question.id, answer.id]
    assert example.messages == [{"role": "user", "content": "How do I get the raider role?"},
                                {"role": "assistant", "content": "Ask a moderator in #roles; they add it."}]


async def test_teach_as_answer_builds_a_multi_turn_conversation_up_to_max_turns(world):
    await world.configure(max_turns=4)
    fake = world.fake
    texts = ["first, an aside", "Is the server open?", "Yes, since noon.", "Which port?", "Port 25565."]
    authors = [world.mod, world.other, world.member, world.other, world.member]
    chain = []
    for text, author in zip(texts, authors):
        chain.append(await fake.post_message(world.channel, author, text, reference=chain[-1] if chain else None))
    rec = await fake.message_context_menu("Teach as answer", chain[-1], world.member)
    fields = modal_fields(rec)
    assert fields["prompt"]["value"] == "Which port?" and "+2 earlier" in fields["prompt"]["label"]
    await fake.submit_modal(rec, {})
    [example] = await world.examples()
    assert example.messages == [
        {"role": "user", "content": "Is the server open?"}, {"role": "assistant", "content": "Yes, since noon."},
        {"role": "user", "content": "Which port?"}, {"role": "assistant", "content": "Port 25565."}]
    assert example.source_message_ids == [m.id for m in chain[1:]]


async def test_teach_as_answer_on_a_plain_message_asks_for_the_question(world):
    fake = world.fake
    msg = await fake.post_message(world.channel, world.member, "Potions are in the guild bank.")
    rec = await fake.message_context_menu("Teach as answer", msg, world.mod)
    assert "value" not in modal_fields(rec)["prompt"] or not modal_fields(rec)["prompt"]["value"]
    with pytest.raises(ValueError, match="required"):  # Discord will not submit it empty
        await fake.submit_modal(rec, {})
    done = await fake.submit_modal(rec, {"prompt": "Where are the potions?"})
    assert "approved" in done.text  # a moderator, auto-approve on by default
    [example] = await world.examples()
    assert example.source_message_ids == [msg.id] and example.status == "approved"


async def test_teach_as_answer_stops_the_chain_at_a_message_without_text(world):
    fake = world.fake
    picture = await fake.post_message(world.channel, world.other, "",
                                      attachments=[fake.attachment("map.png", b"\x89PNG")])
    reply = await fake.post_message(world.channel, world.member, "That's the east gate.", reference=picture)
    rec = await fake.message_context_menu("Teach as answer", reply, world.member)
    assert not modal_fields(rec)["prompt"].get("value")
    done = await fake.submit_modal(rec, {"prompt": "Which gate is on the map?"})
    assert "example #1" in done.text
    [example] = await world.examples()
    assert example.source_message_ids == [reply.id]


# -------------------------------------------------------------------------------- 📚 reactions
async def test_reaction_on_a_reply_nominates_once_then_counts_votes(world):
    fake = world.fake
    pending = collect_pending(world)
    question = await fake.post_message(world.channel, world.other, "What's the wifi password at the meetup?")
    reply = await fake.post_message(world.channel, world.member, "It's on the whiteboard.", reference=question)
    await fake.react(reply, world.other, "📚")
    [example] = await world.examples()
    assert example.status == "pending" and example.source == "reaction"
    assert example.author_id == world.other.id
    assert example.source_message_ids == [question.id, reply.id]
    assert example.messages == [{"role": "user", "content": "What's the wifi password at the meetup?"},
                                {"role": "assistant", "content": "It's on the whiteboard."}]
    assert await world.db.examples.votes(world.guild.id, example.id) == 1
    assert [e.id for e in pending] == [example.id]

    await fake.react(reply, world.mod, "📚")
    await fake.unreact(reply, world.other, "📚")
    await fake.react(reply, world.other, "📚")  # the same member again: still one vote
    assert len(await world.examples()) == 1
    assert await world.db.examples.votes(world.guild.id, example.id) == 2
    assert len(pending) == 1


async def test_reaction_ignores_other_emoji_and_messages_that_are_not_replies(world):
    fake = world.fake
    lone = await fake.post_message(world.channel, world.member, "Just a statement.")
    await fake.react(lone, world.other, "📚")
    question = await fake.post_message(world.channel, world.other, "Question?")
    reply = await fake.post_message(world.channel, world.member, "Answer.", reference=question)
    await fake.react(reply, world.other, "👍")
    assert await world.examples() == []

    await world.configure(reaction_emoji="🧠")
    await fake.react(reply, world.mod, "📚")
    assert await world.examples() == []
    await fake.react(reply, world.mod, "🧠")
    assert len(await world.examples()) == 1


async def test_reaction_without_message_content_intent_explains_how_to_enable_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="bot.cogs.teach")
    async with start_world(tmp_path, message_content=False) as w:
        fake = w.fake
        question = await fake.post_message(w.channel, w.other, "Can you read this?")
        reply = await fake.post_message(w.channel, w.member, "Only with the intent.", reference=question)
        await fake.react(reply, w.other, "📚")
        assert await w.examples() == []
        [notice] = [s for s in fake.sent_in(w.channel) if s.kind == "message"]
        assert "Message Content" in notice.text and "Developer Portal" in notice.text
        assert notice.pings.users == {w.other.id} and not notice.pings.everyone and not notice.pings.roles
        await fake.react(reply, w.mod, "📚")  # told once, not on every reaction
        assert len([s for s in fake.sent_in(w.channel) if s.kind == "message"]) == 1
        # /teach keeps working without the intent
        rec = await fake.slash(w.guild, w.channel, w.member, "teach", {"prompt": "a?", "response": "b."})
        assert "example #1" in rec.text
    assert any("MESSAGE CONTENT" in r.getMessage() for r in caplog.records)
