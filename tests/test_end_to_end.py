"""The whole loop through the stand-in Discord: members teach → a moderator approves in /review →
/retrain → the trainer daemon trains the tiny model in a child process → publishes to Ollama (the
stand-in, merged Gemma 3 path) → flips the pointer → /ask is answered by the new version; then
/model rollback, and the next answer comes from the old one."""
from guildtune.runtime import daemon_options
from tests.bot_harness import start_world
from tests.ollama_standin import standin_reply
from trainer.daemon import TrainerDaemon

FACTS = [("When is raid night?", "Raid night is Friday at nine."),
         ("Where do we post memes?", "Memes go in #memes."),
         ("Who runs the bank?", "Ilse runs the guild bank."),
         ("What is the server motto?", "Light the deep.")]


async def teach_and_approve(world, facts):
    for q, a in facts:
        rec = await world.fake.slash(world.guild, world.channel, world.member, "teach", {"prompt": q, "response": a})
        assert "pending" in rec.text
    card = await world.fake.slash(world.guild, world.channel, world.mod, "review")
    for example in await world.examples("pending"):
        await world.fake.click(card, f"gt:review:approve:{example.id}:card")
    assert await world.examples("pending") == []


async def retrain(world, daemon):
    rec = await world.fake.slash(world.guild, world.channel, world.mod, "retrain")
    assert "queue" in rec.text.lower()
    outcome = await daemon.tick()
    assert outcome is not None and outcome.published, (outcome.run.error, outcome.run.gate_reason)
    return await world.db.versions.active(world.guild.id)


async def test_teach_approve_retrain_swap_ask_rollback(tmp_path, tiny_model_dir):
    settings = {"base_model": str(tiny_model_dir), "device": "cpu", "train_max_steps": 3, "answer_timeout_s": 60}
    async with start_world(tmp_path, settings=settings) as world:
        gid = world.guild.id
        daemon = TrainerDaemon(world.db, daemon_options(world.settings), world.server, on_swap=world.bot.tracker.refresh)
        question = "When is raid night?"

        before = await world.ask(world.member, question)
        assert "base model" in before.text

        await teach_and_approve(world, FACTS[:3])
        v1 = await retrain(world, daemon)
        assert v1.number == 1 and v1.tag == f"guildtune-{gid}:v1"
        stored = world.ollama.models[v1.tag]
        assert stored.files and not stored.adapters and stored.architecture == "gemma3"  # merged, as Ollama needs
        answer = await world.ask(world.member, question)
        assert standin_reply(v1.tag, [{"role": "user", "content": question}]) in answer.text
        [stored] = [a for a in await world.db.answers.list(gid) if a.version_id == v1.id]
        assert stored.question == question

        await teach_and_approve(world, FACTS[3:])
        v2 = await retrain(world, daemon)
        assert v2.number == 2 and v2.n_examples == 4
        answer = await world.ask(world.member, question)
        assert standin_reply(v2.tag, [{"role": "user", "content": question}]) in answer.text

        rec = await world.fake.slash(world.guild, world.channel, world.mod, "model rollback", timeout=60)
        await rec.settle(60)
        assert "now answers with v1" in rec.text
        answer = await world.ask(world.member, question)
        assert standin_reply(v1.tag, [{"role": "user", "content": question}]) in answer.text
        assert (await world.db.answers.list(gid))[0].version_id == v1.id
