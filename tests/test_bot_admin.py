"""Moderator administration through the stand-in Discord: /retrain, /model status|history|rollback,
/dataset stats|export, /config show|set — and the refusal every one of them gives a non-moderator."""
from __future__ import annotations

import json

import discord
import pytest

from storage.records import GuildSettings
from tests.bot_harness import start_world, world  # noqa: F401  (pytest fixture)

PAIRS = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
         for i in range(1, 5)]
REFUSAL = "Only moderators can do this"


async def seed_examples(world):
    """Two approved, one pending, one rejected (by the moderator)."""
    ids = []
    for pairs, status in ((PAIRS[0], "approved"), (PAIRS[1], "approved"), (PAIRS[2], "pending"),
                          (PAIRS[3], "pending")):
        result = await world.db.examples.add(world.guild.id, pairs, source="teach", author_id=world.member.id,
                                             status=status)
        ids.append(result.example.id)
    await world.db.examples.decide(world.guild.id, ids[3], actor_id=world.mod.id, approve=False)
    return ids


async def snapshot(world):
    """Everything an admin command could change."""
    gid = world.guild.id
    runs = await world.db.runs.list(gid)
    versions = await world.db.versions.list(gid)
    return (await world.db.settings.get(gid), [(r.id, r.status) for r in runs],
            [(v.id, v.status) for v in versions], world.bot.tracker.get(gid))


@pytest.mark.parametrize("command, options", [
    ("retrain", {}), ("model status", {}), ("model history", {}), ("model rollback", {}),
    ("model rollback", {"version": 1}), ("dataset stats", {}), ("dataset export", {}),
    ("dataset export", {"format": "alpaca", "status": "all"}),
    ("config set", {"setting": "temperature", "value": "1.5"}),
    ("config set", {"setting": "moderator_role_ids", "value": "123"}),
])
async def test_every_admin_command_refuses_non_moderators(world, command, options):
    await seed_examples(world)
    before = await snapshot(world)
    rec = await world.fake.slash(world.guild, world.channel, world.member, command, options)
    assert rec.ephemeral and REFUSAL in rec.text
    assert not rec.message.attachments and not rec.followups
    assert await snapshot(world) == before


async def test_retrain_queues_a_run_and_says_its_place(world):
    await seed_examples(world)
    await world.db.runs.enqueue(999, trigger="schedule")  # another server's run is ahead in the queue
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "retrain")
    assert rec.ephemeral
    run = (await world.db.runs.list(world.guild.id))[0]
    assert (run.status, run.trigger, run.requested_by) == ("queued", "retrain", world.mod.id)
    assert f"Queued training run #{run.id} on 2 approved example(s): it is number 2" in rec.text

    again = await world.fake.slash(world.guild, world.channel, world.mod, "retrain")
    assert f"Training run #{run.id} is already queued" in again.text and "number 2 in the queue" in again.text
    assert len(await world.db.runs.list(world.guild.id)) == 1

    await world.db.runs.claim_next()  # the other server's
    await world.db.runs.claim_next()  # ours: now running
    busy = await world.fake.slash(world.guild, world.channel, world.mod, "retrain")
    assert f"Training run #{run.id} is already running" in busy.text
    assert len(await world.db.runs.list(world.guild.id)) == 1


async def test_model_status_and_history(world):
    gid = world.guild.id
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "model status")
    assert "the base model: no trained version" in rec.text and "nothing queued or running" in rec.text
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "model history")
    assert "none yet" in rec.text

    db = world.db
    metrics = {"taught_recall": 1.0, "paraphrase_recall": 0.5, "probed": ["a", "b"], "taught_known": ["a", "b"],
               "paraphrase_known": ["a"], "drift": 0.02, "train_loss": 0.9, "n_train": 18}
    v1 = await db.versions.create(gid, run_id=None, adapter_path="/nowhere/v1", base_model="b", metrics={},
                                  n_examples=10)
    v2 = await db.versions.create(gid, run_id=None, adapter_path="/nowhere/v2", base_model="b", metrics=metrics,
                                  n_examples=20)
    await db.versions.activate(gid, v1.id)
    await db.versions.activate(gid, v2.id)
    gated, _, _ = await db.runs.enqueue(gid, trigger="schedule")
    await db.runs.claim_next()
    await db.runs.finish(gid, gated.id, "gated", gate_reason="eval loss 1.5 is worse than v2's 1.1")
    running, _, _ = await db.runs.enqueue(gid, trigger="retrain")
    await db.runs.claim_next()
    await db.runs.update(gid, running.id, step=5, total_steps=10, loss=0.75, eta_s=65)

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "model status")
    text = rec.text
    assert "**Active model:** v2" in text and "trained on 20 example(s)" in text
    assert "Answers 2/2 taught questions, 1/2 asked differently, drift +2.0% from the base" in text
    assert "train loss 0.9000" in text and "18 examples" in text
    # The adapters don't exist, so the model server could not load v2: status says what answers meanwhile.
    assert "still loading v2; answers come from the base model" in text
    assert f"Training run #{running.id}" in text and "step 5/10" in text and "loss 0.7500" in text
    assert "ETA 1m 05s" in text
    assert f"run #{gated.id} gated" in text and "worse than v2's 1.1" in text

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "model history")
    lines = rec.text.splitlines()
    assert lines[1].startswith("**v2** · active ← answering now") and "20 example(s)" in lines[1]
    assert lines[2].startswith("**v1** · retired") and "no metrics recorded" in lines[2]
    assert any(f"run #{running.id} running" in line for line in lines)


async def test_rollback_switches_the_answering_version(tmp_path, tiny_adapter):
    base, adapter = tiny_adapter
    versions = {}

    async def two_versions(w):
        for n in (1, 2):
            v = await w.db.versions.create(w.guild.id, run_id=None, adapter_path=adapter, base_model=base,
                                           metrics={"eval_loss": 2.0 - n / 10}, n_examples=10 * n)
            await w.db.versions.activate(w.guild.id, v.id)
            versions[n] = v

    async with start_world(tmp_path, before_start=two_versions) as world:
        gid = world.guild.id
        assert world.bot.tracker.get(gid).number == 2

        for options, expected in (({"version": 9}, "There is no version v9 in this server"),
                                  ({"version": 2}, "v2 is already the active version")):
            rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback", options)
            assert expected in rec.text and rec.ephemeral
        assert world.bot.tracker.get(gid).number == 2

        rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback", timeout=60)
        await rec.settle(60)
        assert rec.text == "Rolled back: this server now answers with v1 (was v2)."
        assert rec.ephemeral
        assert (await world.db.versions.active(gid)).number == 1
        assert world.bot.tracker.get(gid).id == versions[1].id
        answer = await world.ask(world.member, "Who are you?")
        assert f"guildtune-{gid}:v1" in answer.text and "model v1" in answer.text

        # Back to v2 by number, then v1 is removed from the server: it can't be restored.
        rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback", {"version": 2})
        await rec.settle(60)
        assert "now answers with v2 (was v1)" in rec.text
        await world.db.versions.mark_removed(gid, versions[1].id)
        rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback", {"version": 1})
        assert "v1 was removed from the model server" in rec.text
        rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback")
        assert "no earlier version to roll back to" in rec.text
        assert world.bot.tracker.get(gid).number == 2


async def test_dataset_stats_and_export(world):
    ids = await seed_examples(world)
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset stats")
    assert "2 approved · 1 pending · 1 rejected · 0 deleted" in rec.text
    assert "**By source:** teach 4" in rec.text
    assert "2 approved; a retrain starts at 10" in rec.text

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export")
    assert rec.ephemeral and "2 approved example(s) in messages format" in rec.text
    (file,) = rec.response.attachments
    assert file.filename == f"guildtune-{world.guild.id}-approved-messages.jsonl"
    rows = [json.loads(line) for line in file.data.decode().splitlines()]
    assert rows == [{"messages": PAIRS[0]}, {"messages": PAIRS[1]}]

    await world.db.examples.forget_author(world.guild.id, world.member.id)  # deleted ones never leave
    await world.db.examples.add(world.guild.id, PAIRS[2], source="teach", author_id=world.other.id,
                                status="pending")
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export",
                                 {"format": "alpaca", "status": "all"})
    (file,) = rec.response.attachments
    assert file.filename.endswith("-all-alpaca.json")
    (row,) = json.loads(file.data)
    assert (row["instruction"], row["output"]) == ("Question 3?", "Answer 3.")

    rec = await world.fake.slash(world.guild, world.channel, world.mod, "dataset export", {"status": "rejected"})
    assert rec.text == "There are no rejected examples to export yet." and not rec.response.attachments
    assert len(ids) == 4


async def test_config_show_set_and_autocomplete(world):
    gid = world.guild.id
    role = world.fake.add_role(world.guild, "Curators", discord.Permissions.none())

    async def config_set(setting, value):
        return (await world.fake.slash(world.guild, world.channel, world.mod, "config set",
                                       {"setting": setting, "value": value})).text

    assert await config_set("temperature", "0.3") == "`temperature` is now `0.3` (was `0.7`)."
    assert (await world.db.settings.get(gid)).temperature == 0.3
    assert "review_channel_id` is now <#" in await config_set("review_channel_id", world.review_channel.mention)
    assert (await world.db.settings.get(gid)).review_channel_id == world.review_channel.id
    assert f"now <@&{role.id}>" in await config_set("moderator_role_ids", role.mention)
    assert "now `daily:03:00`" in await config_set("schedule", "daily:03:00")
    assert "now off" in await config_set("auto_approve_moderators", "no")
    assert "now “Answer like a pirate.”" in await config_set("system_prompt", "Answer like a pirate.")
    for name, value in (("top_k", "5"), ("max_tokens", "256"), ("max_turns", "3"), ("min_new_examples", "4"),
                        ("reaction_emoji", "🧠"), ("moderator_upvote_approves", "yes")):
        assert f"`{name}` is now" in await config_set(name, value)
    good = await world.db.settings.get(gid)

    bad = [("temperature", "hot", "temperature = 'hot' is not valid: expected float"),
           ("temperature", "9", "out of range: use a value from 0.0 to 2.0"),
           ("schedule", "sometimes", "schedule 'sometimes' is not valid: use 'off'"),
           ("review_channel_id", "12345", "there is no text channel 12345 in this server"),
           ("moderator_role_ids", "<@&777>", "no role 777 in this server"),
           ("colour", "blue", "Unknown setting 'colour'")]
    for name, value, message in bad:
        assert message in await config_set(name, value)
    assert await world.db.settings.get(gid) == good  # nothing changed

    assert "now `0.7` (was `0.3`)" in await config_set("temperature", "default")

    # Members may read the settings (the refusal text points them here), not change them.
    rec = await world.fake.slash(world.guild, world.channel, world.member, "config show")
    assert rec.ephemeral
    assert f"`moderator_role_ids`: <@&{role.id}>" in rec.text and "`temperature`: `0.7` *(default)*" in rec.text
    assert "`system_prompt`: “Answer like a pirate.”" in rec.text and "Only moderators can change these." in rec.text
    assert all(f"`{name}`" in rec.text for name in GuildSettings.__dataclass_fields__ if name != "guild_id")

    ac = await world.fake.autocomplete(world.guild, world.channel, world.mod, "config set",
                                       {"setting": "temp", "value": ""}, focused="setting")
    assert [c["value"] for c in ac.choices] == ["temperature"]
    ac = await world.fake.autocomplete(world.guild, world.channel, world.mod, "config set",
                                       {"setting": "", "value": ""}, focused="setting")
    assert len(ac.choices) == len(GuildSettings.__dataclass_fields__) - 1
