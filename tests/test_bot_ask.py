"""/ask through discord.py's dispatch against the Discord stand-in, answered by the real
`OllamaServer` client talking to the Ollama stand-in: streaming, splitting, mentions, failures,
limits, and the 👍 / 👎 / ✏️ buttons (also after a restart)."""
from __future__ import annotations

import asyncio
import re
import time

from bot.formatting import has_balanced_fences
from tests.bot_harness import BotWorld, start_world, world  # noqa: F401  (world: pytest fixture)
from tests.discord_standin.world import walk_components

NO_PINGS = {"parse": []}


def custom_ids(message) -> list[str]:
    return [c["custom_id"] for c in message.buttons]


def answer_id_of(message) -> int:
    ids = {int(m.group(1)) for cid in custom_ids(message) if (m := re.match(r"guildtune:answer:(\d+):", cid))}
    assert len(ids) == 1, custom_ids(message)
    return ids.pop()


async def test_ask_streams_by_editing_at_most_about_once_a_second_and_records_the_answer(world):
    words = [f"word{i}" for i in range(40)]
    world.script("Tell me a story", " ".join(words))
    world.ollama.delay_s = 0.06  # about 2.4 s of generation
    started = time.monotonic()
    rec = await world.fake.slash(world.guild, world.channel, world.member, "ask", {"question": "Tell me a story"})
    assert rec.response.type == 5 and not rec.ephemeral  # "thinking…" first, visible to all
    await rec.settle(15)
    elapsed = time.monotonic() - started
    [message] = world.answer_messages(rec)
    assert message.content.startswith(" ".join(words))
    assert "base model" in message.content  # no trained version is active yet
    edits = [s for s in rec.log if s.kind in ("edit", "followup")]
    streaming = edits[:-1]  # the last one adds the buttons
    assert len(streaming) >= 2, "the answer should appear while it is being written"
    assert len(edits) <= elapsed / 1.0 + 2, f"{len(edits)} edits in {elapsed:.1f}s"
    assert all(s.allowed_mentions == NO_PINGS for s in rec.log)
    [answer] = await world.db.answers.list(world.guild.id)
    assert answer.question == "Tell me a story" and answer.answer == " ".join(words)
    assert answer.version_id is None and answer.user_id == world.member.id and answer.latency_ms > 1000
    assert answer_id_of(message) == answer.id
    row = await world.db.fetchone("SELECT message_id FROM answers WHERE id=?", (answer.id,))
    assert row["message_id"] == message.id


async def test_ask_answers_from_the_active_version_after_a_swap(tmp_path):
    adapter = make_tiny_llama_adapter(tmp_path / "model")
    async with start_world(tmp_path, settings={"ollama_base_tag": "llama3.2:1b"}) as w:
        before = await w.ask(w.member, "Who won?")
        assert "[llama3.2:1b]" in before.text and "base model" in before.text
        version = await w.db.versions.create(w.guild.id, run_id=None, adapter_path=str(adapter / "adapter"),
                                             base_model=str(adapter / "base"), metrics={}, n_examples=3)
        await w.db.versions.activate(w.guild.id, version.id)
        await w.bot.tracker.refresh()  # what the trainer's swap triggers (or the next poll)
        after = await w.ask(w.member, "Who won?")
        assert f"[guildtune-{w.guild.id}:v1]" in after.text  # answered by the published version
        assert "model v1" in after.text and "base model" not in after.text
        answers = await w.db.answers.list(w.guild.id)
        assert [a.version_id for a in answers] == [version.id, None]


def make_tiny_llama_adapter(root):
    """A tiny llama base and a LoRA adapter for it (Ollama takes llama adapters as they are)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.tiny_model import make_tiny_model_dir

    base = make_tiny_model_dir(root / "base", "llama")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(root / "adapter")
    return root


async def test_ask_uses_the_guild_system_prompt_and_generation_options(world):
    await world.configure(system_prompt="You are the raid helper.", temperature=0.2, top_k=7, max_tokens=64)
    await world.ask(world.member, "Options?")
    [body] = [b for method, path, b in world.ollama.requests if path == "/api/chat" and b.get("messages")]
    assert body["messages"][0] == {"role": "system", "content": "You are the raid helper."}
    assert body["messages"][-1] == {"role": "user", "content": "Options?"}
    assert body["options"]["temperature"] == 0.2 and body["options"]["top_k"] == 7
    assert body["options"]["num_predict"] == 64


async def test_mentions_in_model_output_ping_nobody(world):
    role = world.fake.add_role(world.guild, "raiders", mentionable=True)
    world.script("Say hi", f"@everyone @here <@&{role.id}> <@{world.other.id}> hello all")
    rec = await world.ask(world.member, "Say hi")
    assert "@everyone" in rec.text  # shown as text ...
    assert rec.log and all(s.allowed_mentions == NO_PINGS and not s.pings for s in rec.log)  # ... pinging no one


async def test_a_4500_character_answer_is_split_into_three_messages_with_code_blocks_intact(world):
    lines = [f"    total = total + compute_step({i:03d})  # accumulate step {i:03d}" for i in range(70)]
    code = "```python\ntotal = 0\n" + "\n".join(lines) + "\nprint(total)\n```"
    text = "Here is the loop, unrolled:\n\n" + code + "\n\nThat is all " + "really " * 40 + "done."
    assert 4400 <= len(text) <= 4700
    world.script("Unroll it", text)
    await world.configure(max_tokens=4096)
    rec = await world.ask(world.member, "Unroll it")
    messages = world.answer_messages(rec)
    assert len(messages) == 3
    assert all(len(m.content) <= 2000 and has_balanced_fences(m.content) for m in messages)
    assert all(m.content.count("```python") == 1 for m in messages[:2])  # reopened with its language
    shown_code = [line for m in messages for line in m.content.splitlines() if "compute_step" in line]
    assert shown_code == lines  # nothing lost, nothing repeated, in order
    assert "done." in messages[-1].content and "base model" in messages[-1].content
    assert custom_ids(messages[-1]) and not messages[0].buttons and not messages[1].buttons
    assert all(s.allowed_mentions == NO_PINGS for s in rec.log)
    [answer] = await world.db.answers.list(world.guild.id)
    assert answer.answer == text  # stored whole


async def test_private_ask_is_ephemeral(world):
    rec = await world.ask(world.member, "Secret?", private=True)
    assert rec.ephemeral
    [message] = world.answer_messages(rec)
    assert message.ephemeral and custom_ids(message)


async def test_model_server_down_gives_a_clear_message_and_the_next_ask_works(tmp_path):
    async with start_world(tmp_path, settings={"ask_cooldown_s": 30}) as w:
        await w.ollama.go_down()
        rec = await w.ask(w.member, "Anyone there?")
        text = rec.text
        assert "not answering right now" in text and "Try again" in text
        assert not world_has_buttons(w, rec)
        assert await w.db.answers.list(w.guild.id) == []
        # the bot is still up
        teach = await w.fake.slash(w.guild, w.channel, w.member, "teach", {"prompt": "up?", "response": "yes"})
        assert "example #1" in teach.text
        await w.ollama.come_back()
        rec = await w.ask(w.member, "Anyone there?")  # a failed ask does not start the cooldown
        assert "Anyone there?" in rec.text and world_has_buttons(w, rec)
        assert len(await w.db.answers.list(w.guild.id)) == 1


def world_has_buttons(w: BotWorld, rec) -> bool:
    return any(m.buttons for m in w.answer_messages(rec))


async def test_a_slow_model_is_cut_off_at_the_answer_timeout(tmp_path):
    async with start_world(tmp_path, settings={"answer_timeout_s": 1.0}) as w:
        w.ollama.delay_s = 0.4
        started = time.monotonic()
        rec = await w.ask(w.member, "Take your time")
        elapsed = time.monotonic() - started
        assert elapsed < 2.5
        assert "⚠️" in rec.text and re.search(r"within 1 ?s", rec.text)
        assert await w.db.answers.list(w.guild.id) == []
        w.ollama.delay_s = 0
        rec = await w.ask(w.member, "Now quickly")
        assert "Now quickly" in rec.text


async def test_a_failure_mid_answer_keeps_the_partial_text_and_says_it_was_cut_off(world):
    world.ollama.fail_next_chat = "llama runner process has terminated"
    rec = await world.ask(world.member, "Crash please")
    assert rec.text.startswith("[gemma3:270m]")  # the first piece arrived before the failure
    assert "cut off" in rec.text and "llama runner process has terminated" in rec.text
    assert not world_has_buttons(world, rec) and await world.db.answers.list(world.guild.id) == []
    rec = await world.ask(world.member, "Crash please")
    assert world_has_buttons(world, rec)


async def test_per_member_cooldown_says_when_to_retry(tmp_path):
    async with start_world(tmp_path, settings={"ask_cooldown_s": 30}) as w:
        await w.ask(w.member, "First")
        again = await w.fake.slash(w.guild, w.channel, w.member, "ask", {"question": "Second"})
        assert again.ephemeral and "ask again" in again.text
        when = int(re.search(r"<t:(\d+):R>", again.text).group(1))
        assert 25 <= when - time.time() <= 31
        other = await w.ask(w.other, "Mine")  # the cooldown is per member
        assert "Mine" in other.text
        assert len(await w.db.answers.list(w.guild.id)) == 2


async def test_per_guild_concurrency_cap(tmp_path):
    async with start_world(tmp_path, settings={"ask_concurrency": 1}) as w:
        w.ollama.delay_s = 0.1
        first = await w.fake.slash(w.guild, w.channel, w.member, "ask", {"question": "Slow one"})
        assert first.response.type == 5
        busy = await w.fake.slash(w.guild, w.channel, w.other, "ask", {"question": "Me too"})
        assert busy.ephemeral and "limit is 1" in busy.text and "<t:" in busy.text
        await first.settle(15)
        w.ollama.delay_s = 0
        later = await w.ask(w.other, "Me too")
        assert "Me too" in later.text


# ---------------------------------------------------------------------------------------- buttons
async def test_votes_are_idempotent_per_member(world):
    rec = await world.ask(world.member, "Vote on me")
    [message] = world.answer_messages(rec)
    aid = answer_id_of(message)
    up = await world.fake.click(message, f"guildtune:answer:{aid}:up", world.other)
    assert up.ephemeral and "Thanks" in up.text and "👍 1" in up.text
    again = await world.fake.click(message, f"guildtune:answer:{aid}:up", world.other)
    assert "counts once" in again.text and "👍 1" in again.text
    down = await world.fake.click(message, f"guildtune:answer:{aid}:down", world.other)
    assert "Changed" in down.text and "👍 0 · 👎 1" in down.text
    await world.fake.click(message, f"guildtune:answer:{aid}:up", world.member)
    assert await world.db.answers.tally(world.guild.id, aid) == {"up": 1, "down": 1, "correction": 0}
    assert await world.examples() == []  # members' votes make no examples


async def test_a_moderators_upvote_approves_the_pair_when_the_guild_says_so(world):
    rec = await world.ask(world.member, "Good question")
    [message] = world.answer_messages(rec)
    aid = answer_id_of(message)
    await world.fake.click(message, f"guildtune:answer:{aid}:up", world.mod)
    assert await world.examples() == []  # setting off by default

    await world.configure(moderator_upvote_approves=True, preference_up_votes=10)  # (no preference example here)
    await world.fake.click(message, f"guildtune:answer:{aid}:up", world.member)
    assert await world.examples() == []  # not a moderator
    click = await world.fake.click(message, f"guildtune:answer:{aid}:up", world.mod)
    [example] = await world.examples()
    assert f"example #{example.id}" in click.text
    answer = await world.db.answers.get(world.guild.id, aid)
    assert example.status == "approved" and example.answer_id == aid
    assert example.messages == [{"role": "user", "content": "Good question"},
                                {"role": "assistant", "content": answer.answer}]
    events = await world.db.examples.events(world.guild.id, example.id)
    assert events[0].actor_id == world.mod.id


async def test_correct_opens_a_prefilled_modal_and_makes_a_pending_example(world):
    seen = []

    async def on_example_pending(example, channel_id=None):
        seen.append(example.id)

    world.bot.add_listener(on_example_pending, "on_example_pending")
    rec = await world.ask(world.member, "What time is raid?")
    [message] = world.answer_messages(rec)
    aid = answer_id_of(message)
    answer = await world.db.answers.get(world.guild.id, aid)
    opened = await world.fake.click(message, f"guildtune:answer:{aid}:correct", world.other)
    [field] = [c for c in walk_components(opened.modal["components"]) if c.get("type") == 4]
    assert field["value"] == answer.answer
    done = await world.fake.submit_modal(opened, {field["custom_id"]: "Raid starts at 21:00 server time."})
    assert done.ephemeral and "example #1" in done.text and "pending" in done.text
    [example] = await world.examples()
    assert example.source == "correction" and example.status == "pending" and example.answer_id == aid
    assert example.author_id == world.other.id
    assert example.messages[-1] == {"role": "assistant", "content": "Raid starts at 21:00 server time."}
    assert example.messages[0] == {"role": "user", "content": "What time is raid?"}
    [fb] = await world.db.answers.feedback(world.guild.id, aid)
    assert fb.kind == "correction" and fb.example_id == example.id and fb.user_id == world.other.id
    await world.fake.settle()
    assert seen == [example.id]


async def test_buttons_keep_working_after_a_restart(world):
    rec = await world.ask(world.member, "Still there after a restart?")
    [message] = world.answer_messages(rec)
    aid = answer_id_of(message)
    await world.restart_bot()
    up = await world.fake.click(message, f"guildtune:answer:{aid}:up", world.other)
    assert "Thanks" in up.text
    opened = await world.fake.click(message, f"guildtune:answer:{aid}:correct", world.other)
    assert opened.response.is_modal
    assert (await world.db.answers.tally(world.guild.id, aid))["up"] == 1


async def test_concurrent_asks_from_two_members_both_finish(world):
    world.ollama.delay_s = 0.02
    a, b = await asyncio.gather(world.ask(world.member, "One?"), world.ask(world.other, "Two?"))
    assert "One?" in a.text and "Two?" in b.text
    assert len(await world.db.answers.list(world.guild.id)) == 2


async def test_a_question_of_only_invisible_characters_is_refused_and_reaches_no_model(world):
    rec = await world.fake.slash(world.guild, world.channel, world.member, "ask", {"question": "\u200b\u2060\ufeff "})
    await rec.settle(5)
    assert rec.ephemeral and "Your question is empty" in rec.text
    assert await world.db.answers.list(world.guild.id) == []
    assert not [r for r in world.ollama.requests if r[1] == "/api/chat"]
