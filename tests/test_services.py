"""The long-running wiring: the bot's tracker follows a pointer flipped by another process, and
`guildtune up` (bot + trainer in one process) answers, trains, and shuts down cleanly on Ctrl-C
with the running job cancelled and recorded as such."""
import asyncio
import logging
import time

from guildtune.runtime import run_services
from guildtune.settings import Settings
from serving.ollama_server import OllamaServer
from serving.version_tracker import ActiveVersionTracker
from storage.db import Database
from tests.discord_standin import FakeDiscord
from tests.ollama_standin import OllamaStandIn


async def test_tracker_loads_then_switches_and_keeps_old_on_failed_load(tmp_path, tiny_adapter):
    base, adapter = tiny_adapter
    trainer_db = await Database.open(tmp_path / "g.db")   # the trainer process's connection
    bot_db = await Database.open(tmp_path / "g.db")       # the bot process's connection
    ollama = OllamaStandIn()
    await ollama.start()
    server = OllamaServer(ollama.url, base_tag="gemma3:270m", work_dir=tmp_path / "stage")
    tracker = ActiveVersionTracker(bot_db, server, poll_s=0.2)
    try:
        await tracker.start()
        assert tracker.get(1) is None
        v1 = await trainer_db.versions.create(1, run_id=None, adapter_path=adapter, base_model=base, metrics={},
                                              n_examples=1)
        t0 = time.monotonic()
        await trainer_db.versions.activate(1, v1.id)
        while tracker.get(1) is None:
            assert time.monotonic() - t0 < 10, "the tracker did not notice the flip"
            await asyncio.sleep(0.05)
        assert tracker.get(1).id == v1.id
        assert "guildtune-1:v1" in ollama.load_events  # loaded before switching
        # a version whose adapter cannot be loaded: the guild keeps answering with v1
        broken = tmp_path / "broken"
        broken.mkdir()
        v2 = await trainer_db.versions.create(1, run_id=None, adapter_path=str(broken), base_model=base,
                                              metrics={}, n_examples=1)
        await trainer_db.versions.activate(1, v2.id)
        await asyncio.sleep(1.0)
        assert tracker.get(1).id == v1.id
    finally:
        await tracker.stop()
        await server.close()
        await ollama.stop()
        await trainer_db.close()
        await bot_db.close()


async def test_up_answers_trains_and_cancels_the_job_on_ctrl_c(tmp_path, tiny_model_dir, caplog):
    caplog.set_level(logging.DEBUG)  # everything discord.py and we log, the token must be in none of it
    ollama = OllamaStandIn()
    await ollama.start()
    settings = Settings(_env_file=None, discord_token="up-test-token", data_dir=tmp_path / "data",
                        server="ollama", ollama_host=ollama.url, base_model=str(tiny_model_dir), device="cpu",
                        train_max_steps=2000, trainer_poll_s=0.2, version_poll_s=0.5, ask_cooldown_s=0)
    db = await Database.open(settings.db_path)
    try:
        async with FakeDiscord() as fake:
            guild = fake.add_guild("Up")
            channel = fake.add_channel(guild, "general")
            member = fake.add_member(guild, "alice")
            for i in range(3):
                await db.examples.add(guild.id, [{"role": "user", "content": f"q{i}"},
                                                 {"role": "assistant", "content": f"a{i}"}],
                                      source="import", author_id=None, status="approved")
            run, _, _ = await db.runs.enqueue(guild.id, trigger="retrain")
            fake.token = settings.discord_token.get_secret_value()  # the token the stand-in accepts
            stop = asyncio.Event()
            services = asyncio.create_task(run_services(settings, bot=True, trainer=True, stop=stop))
            t0 = time.monotonic()
            while not fake.commands or (await db.runs.get(guild.id, run.id)).step < 1:
                assert not services.done(), services.exception()
                assert time.monotonic() - t0 < 120, "bot not synced or the job never started"
                await asyncio.sleep(0.2)
            rec = await fake.slash(guild, channel, member, "ask", {"question": "hello?"})
            assert "[gemma3:270m]" in await rec.final_text(30)
            stop.set()  # what Ctrl-C does
            await asyncio.wait_for(services, 60)
            final = await db.runs.get(guild.id, run.id)
            assert final.status == "cancelled" and final.step < 2000
            assert await db.versions.active(guild.id) is None
            assert "Bot up-test-token" in fake.authorization_headers
            assert caplog.records and "up-test-token" not in caplog.text
            assert all("up-test-token" not in (m.content or "") for m in fake.sent)
    finally:
        await db.close()
        await ollama.stop()
