"""Moderator review through the stand-in Discord: the /review card and its buttons and forms, the
review channel's posts (buttons and ✅/❌ reactions), refusals, restarts, and two moderators racing."""
from __future__ import annotations

import asyncio

import discord

from tests.bot_harness import world  # noqa: F401  (pytest fixture)

PAIR = [{"role": "user", "content": "When is raid night?"}, {"role": "assistant", "content": "Thursdays at 20:00."}]


def conv(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {n}?"}, {"role": "assistant", "content": f"Answer {n}."}]


async def add_pending(world, messages, author=None):
    result = await world.db.examples.add(world.guild.id, messages, source="teach",
                                         author_id=(author or world.member).id)
    return result.example


def card_embed(message):
    assert message.embeds, f"expected an embed card, got {message.content!r}"
    return message.embeds[0]


def custom_ids(message):
    return [c["custom_id"] for c in message.walk_components() if c.get("custom_id")]


async def review_posts(world):
    """The bot's messages in #review (posts, not edits), in order, once the bot has finished posting."""
    await world.fake.settle()
    return [s.message for s in world.fake.sent_in(world.review_channel) if s.kind == "message"]


async def test_review_card_shows_the_next_example_and_approve_moves_on(world):
    first = await add_pending(world, conv(1))
    second = await add_pending(world, conv(2), author=world.other)

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    assert rec.ephemeral
    embed = card_embed(rec.message)
    assert embed["title"] == f"Example #{first.id} · pending"
    assert "Question number 1?" in embed["description"] and "Answer 1." in embed["description"]
    assert f"<@{world.member.id}>" in str(embed["fields"])
    assert "teach" in str(embed["fields"])
    assert embed["footer"]["text"] == "2 pending examples left to review"
    assert custom_ids(rec.message) == [f"gt:review:{a}:{first.id}:card" for a in ("approve", "edit", "reject", "skip")]

    click = await world.fake.click(rec, f"gt:review:approve:{first.id}:card")
    assert click.response.type == 7  # the card itself is updated
    assert f"Example #{first.id} approved" in rec.message.content
    embed = card_embed(rec.message)
    assert embed["title"] == f"Example #{second.id} · pending"
    assert embed["footer"]["text"] == "1 pending example left to review"
    assert (await world.db.examples.get(world.guild.id, first.id)).status == "approved"
    events = await world.db.examples.events(world.guild.id, first.id)
    assert (events[-1].action, events[-1].actor_id) == ("approved", world.mod.id)

    await world.fake.click(rec, f"gt:review:approve:{second.id}:card")
    assert "All caught up" in rec.message.content and not rec.message.embeds and not rec.message.components
    assert [e.status for e in await world.examples()] == ["approved", "approved"]


async def test_nothing_to_review_and_skip_wraps_around(world):
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    assert rec.text == "Nothing to review: there are no pending examples." and rec.ephemeral

    a, b = await add_pending(world, conv(1)), await add_pending(world, conv(2))
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    await world.fake.click(rec, f"gt:review:skip:{a.id}:card")
    assert card_embed(rec.message)["title"].startswith(f"Example #{b.id}")
    await world.fake.click(rec, f"gt:review:skip:{b.id}:card")
    assert card_embed(rec.message)["title"].startswith(f"Example #{a.id}")
    assert "back to the oldest" in rec.message.content
    assert {e.status for e in await world.examples()} == {"pending"}  # skipping decides nothing


async def test_reject_with_a_reason_and_edit_then_approve(world):
    a = await add_pending(world, PAIR)
    b = await add_pending(world, [{"role": "system", "content": "Be brief."}, *conv(2)])
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")

    form = await world.fake.click(rec, f"gt:review:reject:{a.id}:card")
    assert form.response.is_modal and form.modal["title"] == f"Example #{a.id}".replace("Example", "Reject example")
    await world.fake.submit_modal(form, {"reason": "Raid night moved to Friday"})
    assert f"Example #{a.id} rejected" in rec.message.content
    events = await world.db.examples.events(world.guild.id, a.id)
    assert (events[-1].action, events[-1].actor_id, events[-1].reason) == ("rejected", world.mod.id,
                                                                           "Raid night moved to Friday")

    form = await world.fake.click(rec, f"gt:review:edit:{b.id}:card")
    fields = {c["custom_id"]: c for row in form.modal["components"] for c in row.get("components", [row])
              if c.get("custom_id")}
    assert [f["value"] for f in fields.values()] == ["Be brief.", "Question number 2?", "Answer 2."]
    assert [f["label"] for f in fields.values()] == ["System prompt (empty: none)", "User (turn 1)",
                                                      "Assistant (turn 1)"]
    await world.fake.submit_modal(form, {"m0": "", "m2": "Answer two, corrected."})
    saved = await world.db.examples.get(world.guild.id, b.id)
    assert saved.status == "approved"
    assert saved.messages == [{"role": "user", "content": "Question number 2?"},
                              {"role": "assistant", "content": "Answer two, corrected."}]
    events = await world.db.examples.events(world.guild.id, b.id)
    assert (events[-1].action, events[-1].actor_id) == ("edited_and_approved", world.mod.id)
    assert "All caught up" in rec.message.content


async def test_edit_that_duplicates_another_example_keeps_it_pending(world):
    await world.db.examples.add(world.guild.id, conv(1), source="teach", author_id=world.member.id,
                                status="approved")
    b = await add_pending(world, conv(2))
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    form = await world.fake.click(rec, f"gt:review:edit:{b.id}:card")
    await world.fake.submit_modal(form, {"m0": "Question number 1?", "m1": "Answer 1."})
    assert "duplicates example #1" in rec.message.content
    assert card_embed(rec.message)["title"] == f"Example #{b.id} · pending"  # shown again, nothing lost
    assert (await world.db.examples.get(world.guild.id, b.id)).messages == conv(2)


async def test_non_moderators_are_refused_and_nothing_changes(world):
    example = await add_pending(world, PAIR)
    rec = await world.fake.slash(world.guild, world.channel, world.member, "review")
    assert rec.ephemeral and "Only moderators" in rec.text and not rec.message.embeds

    await world.configure(review_channel_id=world.review_channel.id)
    await world.fake.slash(world.guild, world.channel, world.member, "teach",
                           {"prompt": "Who leads?", "response": "Alice leads."})
    post = (await review_posts(world))[-1]
    new_id = int(custom_ids(post)[0].split(":")[3])
    for action in ("approve", "edit", "reject"):
        click = await world.fake.click(post, f"gt:review:{action}:{new_id}:post", user=world.other)
        assert click.response.type == 4 and click.ephemeral and "Only moderators" in click.text
    await world.fake.react(post, world.other, "✅")
    assert {e.status for e in await world.examples()} == {"pending"}
    assert example.status == "pending" and post.components  # buttons still there


async def test_two_moderators_racing_on_one_example(world):
    role = world.fake.add_role(world.guild, "Curators", discord.Permissions.none())
    mod2 = world.fake.add_member(world.guild, "mod2", roles=[role])
    await world.configure(moderator_role_ids=[role.id])
    example = await add_pending(world, PAIR)
    card1 = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    card2 = await world.fake.slash(world.guild, world.channel, mod2, "review")
    cid = f"gt:review:approve:{example.id}:card"

    await asyncio.gather(world.fake.click(card1, cid), world.fake.click(card2, cid))

    events = [e for e in await world.db.examples.events(world.guild.id, example.id) if e.action == "approved"]
    assert len(events) == 1
    winner, loser = (card1, card2) if events[0].actor_id == world.mod.id else (card2, card1)
    assert f"Example #{example.id} approved" in winner.message.content
    assert f"already approved by <@{winner.user.id}>" in loser.message.content
    # A third try, after the fact, still changes nothing.
    late = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    assert late.text == "Nothing to review: there are no pending examples."


async def test_review_channel_post_and_reactions_decide_and_edit_the_post(world):
    await world.configure(review_channel_id=world.review_channel.id)
    await world.fake.slash(world.guild, world.channel, world.member, "teach",
                           {"prompt": "When is raid night?", "response": "Thursdays."})
    await world.fake.slash(world.guild, world.channel, world.other, "teach",
                           {"prompt": "Where do we meet?", "response": "At the bank."})
    first, second = await review_posts(world)
    e1, e2 = await world.examples()
    assert card_embed(first)["title"] == f"Example #{e1.id} · pending"
    assert "When is raid night?" in card_embed(first)["description"]
    assert custom_ids(first) == [f"gt:review:{a}:{e1.id}:post" for a in ("approve", "edit", "reject")]
    assert not world.fake.sent_in(world.review_channel)[0].pings  # the author mention pings nobody
    assert await world.db.examples.example_for_review_post(world.guild.id, first.id) == e1

    await world.fake.react(first, world.mod, "✅")
    assert (await world.db.examples.get(world.guild.id, e1.id)).status == "approved"
    decided = card_embed(first)
    assert decided["title"] == f"Example #{e1.id} · approved"
    assert f"Approved by <@{world.mod.id}>" in str(decided["fields"]) and not first.components
    events = await world.db.examples.events(world.guild.id, e1.id)
    assert (events[-1].action, events[-1].actor_id) == ("approved", world.mod.id)

    await world.fake.react(second, world.mod, "❌")
    assert (await world.db.examples.get(world.guild.id, e2.id)).status == "rejected"
    assert f"Rejected by <@{world.mod.id}>" in str(card_embed(second)["fields"]) and not second.components

    # A later ❌ on the approved post changes nothing.
    await world.fake.react(first, world.mod, "❌")
    assert (await world.db.examples.get(world.guild.id, e1.id)).status == "approved"


async def test_post_buttons_reject_with_reason_edit_and_survive_a_restart(world):
    await world.configure(review_channel_id=world.review_channel.id)
    for prompt in ("One?", "Two?", "Three?"):
        await world.fake.slash(world.guild, world.channel, world.member, "teach",
                               {"prompt": prompt, "response": "Yes."})
    p1, p2, p3 = await review_posts(world)
    e1, e2, e3 = await world.examples()

    form = await world.fake.click(p1, f"gt:review:reject:{e1.id}:post", user=world.mod)
    done = await world.fake.submit_modal(form, {"reason": "too vague"})
    assert done.response.type == 7
    assert "Reason: too vague" in str(card_embed(p1)["fields"]) and not p1.components

    form = await world.fake.click(p2, f"gt:review:edit:{e2.id}:post", user=world.mod)
    await world.fake.submit_modal(form, {"m1": "Yes, two."})
    assert (await world.db.examples.get(world.guild.id, e2.id)).messages[-1]["content"] == "Yes, two."
    assert "Yes, two." in card_embed(p2)["description"] and card_embed(p2)["title"].endswith("approved")

    await world.restart_bot()  # the buttons are persistent: a fresh process still handles them
    click = await world.fake.click(p3, f"gt:review:approve:{e3.id}:post", user=world.mod)
    assert click.response.type == 7 and not p3.components
    assert (await world.db.examples.get(world.guild.id, e3.id)).status == "approved"

    # A click on a post decided elsewhere (e.g. by /review) says who decided.
    e4 = await add_pending(world, conv(4))
    world.bot.dispatch("example_pending", e4)
    await world.fake.settle()
    p4 = (await review_posts(world))[-1]
    card = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    await world.fake.click(card, f"gt:review:approve:{e4.id}:card")
    assert card_embed(p4)["title"].endswith("approved") and not p4.components  # the post followed


async def test_edit_form_of_a_long_conversation_and_of_an_oversized_message(world):
    turns = []
    for n in range(1, 4):
        turns += [{"role": "user", "content": f"Q{n}?"}, {"role": "assistant", "content": f"A{n}."}]
    long_one = await add_pending(world, turns)
    huge = await add_pending(world, [{"role": "user", "content": "Explain everything."},
                                     {"role": "assistant", "content": "word " * 1000}])  # 5,000 characters
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    assert "**User:** Q1?" in card_embed(rec.message)["description"]

    form = await world.fake.click(rec, f"gt:review:edit:{long_one.id}:card")
    assert form.modal["title"] == f"Edit example #{long_one.id} (last 5 messages)"
    await world.fake.submit_modal(form, {"m5": "A3, better."})
    saved = await world.db.examples.get(world.guild.id, long_one.id)
    assert saved.messages == turns[:5] + [{"role": "assistant", "content": "A3, better."}]

    card = card_embed(rec.message)
    assert card["title"] == f"Example #{huge.id} · pending"
    assert "more characters not shown here" in card["description"] and len(card["description"]) < 4096
    refused = await world.fake.click(rec, f"gt:review:edit:{huge.id}:card")
    assert refused.ephemeral and "longer than the 4,000 characters a Discord form can hold" in refused.text
    assert (await world.db.examples.get(world.guild.id, huge.id)).status == "pending"


async def test_card_links_to_the_source_message_when_its_channel_is_known(world):
    answer = await world.db.answers.record(world.guild.id, question="When is raid night?", answer="Mondays.",
                                           version_id=None, latency_ms=5, user_id=world.member.id,
                                           channel_id=world.channel.id, message_id=4242)
    result = await world.db.examples.add(world.guild.id, PAIR, source="correction", author_id=world.member.id,
                                         source_message_ids=[4242], answer_id=answer.id)
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    fields = {f["name"]: f["value"] for f in card_embed(rec.message)["fields"]}
    assert fields["Source"] == (f"correction · [message 1](https://discord.com/channels/{world.guild.id}/"
                                f"{world.channel.id}/4242)")
    assert fields["Corrects"] == f"answer #{answer.id}"
    assert result.example.id == 1


async def test_card_links_to_reaction_sources_in_their_channel(world):
    question = await world.fake.post_message(world.channel, world.other, "Where are the rules?")
    reply = await world.fake.post_message(world.channel, world.mod, "Pinned in #rules.", reference=question)
    await world.fake.react(reply, world.member, "📚")
    [example] = await world.examples("pending")
    assert example.source == "reaction" and example.source_channel_id == world.channel.id
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    fields = {f["name"]: f["value"] for f in card_embed(rec.message)["fields"]}
    base = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}"
    assert fields["Source"] == f"reaction · [message 1]({base}/{question.id}) [message 2]({base}/{reply.id})"
