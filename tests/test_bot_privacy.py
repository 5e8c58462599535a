"""/forget: confirm deletes the caller's examples (and only theirs), cancel deletes nothing, and the
buttons survive a restart and refuse anyone else."""
from __future__ import annotations

import pytest

from tests.bot_harness import BotWorld, world  # noqa: F401  (world: pytest fixture)

CONFIRM = "guildtune:forget:{}:confirm"
CANCEL = "guildtune:forget:{}:cancel"


async def teach(w: BotWorld, user, prompt: str, response: str) -> None:
    rec = await w.fake.slash(w.guild, w.channel, user, "teach", {"prompt": prompt, "response": response})
    assert "Saved" in rec.text


async def test_forget_confirm_deletes_only_the_callers_examples(world):
    await teach(world, world.member, "Alice's question?", "Alice's answer.")
    await teach(world, world.member, "Another one?", "Yes.")
    await teach(world, world.other, "Bob's question?", "Bob's answer.")
    rec = await world.fake.slash(world.guild, world.channel, world.member, "forget")
    assert rec.ephemeral and "cannot be undone" in rec.text
    assert await world.db.examples.stats(world.guild.id) == {"status": {"pending": 3},
                                                             "source": {"teach": 3}}  # nothing yet
    done = await world.fake.click(rec, CONFIRM.format(world.member.id))
    assert done.response.type == 7  # the confirmation message itself is updated
    assert "Deleted 2 examples" in rec.text and not rec.message.buttons
    by_author = {e.author_id: e for e in await world.examples() if e.status != "deleted"}
    assert list(by_author) == [world.other.id]
    forgotten = [e for e in await world.examples() if e.author_id == world.member.id]
    assert len(forgotten) == 2 and all(e.status == "deleted" and e.messages == [] for e in forgotten)
    events = await world.db.examples.events(world.guild.id, forgotten[0].id)
    assert events[-1].action == "forgotten" and all("messages" not in (ev.before or {}) for ev in events)


async def test_forget_cancel_deletes_nothing(world):
    await teach(world, world.member, "Keep me?", "Yes.")
    rec = await world.fake.slash(world.guild, world.channel, world.member, "forget")
    await world.fake.click(rec, CANCEL.format(world.member.id))
    assert "nothing was deleted" in rec.text and not rec.message.buttons
    assert [e.status for e in await world.examples()] == ["pending"]


async def test_forget_with_no_examples_says_so(world):
    rec = await world.fake.slash(world.guild, world.channel, world.other, "forget")
    await world.fake.click(rec, CONFIRM.format(world.other.id))
    assert "no examples" in rec.text


async def test_forget_buttons_work_after_restart_and_only_for_the_caller(world):
    await teach(world, world.member, "Mine?", "Yes.")
    rec = await world.fake.slash(world.guild, world.channel, world.member, "forget")
    with pytest.raises(PermissionError):  # ephemeral: nobody else even sees the buttons
        await world.fake.click(rec, CONFIRM.format(world.member.id), world.other)
    await world.restart_bot()
    await world.fake.click(rec, CONFIRM.format(world.member.id))
    assert "Deleted 1 example " in rec.text
    assert [e.status for e in await world.examples()] == ["deleted"]
