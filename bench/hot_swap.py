"""Hot-swap benchmark (local server, embedded Gemma 3 270M, CPU or GPU).

Prints, each beside its baseline measured in the same run:
1. swap: time from a successful training run (the pointer flip in the database) to the first
   token of an answer from the new version, as the bot process sees it (its tracker polls the
   database, loads the adapter, then switches) — against the first-token latency of the same
   question on a version that is already loaded (the steady state).
2. /ask overhead: the full /ask path through discord.py and a stand-in Discord on loopback
   (interaction, streaming edits, storing the answer) — against `server.chat` called directly
   with the same question and options.

Usage: .venv/bin/python bench/hot_swap.py [--asks 5] [--steps 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = "What is the Lanternfish guild's motto?"


async def first_token_s(server, version, messages, options) -> tuple[float, str]:
    t0 = time.perf_counter()
    first = None
    text = []
    async for piece in server.chat(version, messages, options):
        if first is None:
            first = time.perf_counter() - t0
        text.append(piece)
    return first, "".join(text)


async def main(args) -> dict:
    import discord

    from bot.bot import GuildtuneBot
    from guildtune.demo import community_facts
    from guildtune.runtime import base_model_dir, bot_options, daemon_options
    from guildtune.settings import load_settings
    from serving.local_server import LocalServer
    from serving.prompting import guild_messages
    from serving.protocol import GenerationOptions
    from serving.version_tracker import ActiveVersionTracker
    from storage.db import Database
    from tests.discord_standin import FakeDiscord
    from trainer.daemon import TrainerDaemon

    tmp = Path(tempfile.mkdtemp(prefix="guildtune-bench-"))
    outer = load_settings()
    settings = load_settings(GUILDTUNE_DATA_DIR=str(tmp), GUILDTUNE_DB=str(tmp / "b.db"),
                             GUILDTUNE_MODELS_DIR=str(outer.models_dir), GUILDTUNE_SERVER="local",
                             GUILDTUNE_TRAIN_MAX_STEPS=args.steps, GUILDTUNE_VERSION_POLL=args.poll,
                             GUILDTUNE_ASK_COOLDOWN=0, GUILDTUNE_ANSWER_TIMEOUT=600)
    guild = 1
    db = await Database.open(settings.db_path)
    facts = community_facts()
    await db.examples.add_many(guild, [[{"role": "user", "content": f["question"]},
                                        {"role": "assistant", "content": f["answer"]}] for f in facts],
                               source="import", author_id=None, status="approved")
    await db.settings.set(guild, max_tokens=args.max_tokens, temperature=0.0)
    gs = await db.settings.get(guild)
    base = base_model_dir(settings)
    trainer_server = LocalServer(base, device=settings.device)  # the trainer process's view
    bot_server = LocalServer(base, device=settings.device)      # the bot process's model server
    tracker = ActiveVersionTracker(db, bot_server, poll_s=settings.version_poll_s)
    daemon = TrainerDaemon(db, daemon_options(settings), trainer_server)
    messages = guild_messages(gs, QUESTION)
    options = GenerationOptions(temperature=0.0, max_tokens=args.max_tokens, timeout_s=600)
    results: dict = {"device": settings.device, "poll_s": settings.version_poll_s}

    async def train_one():
        run, _, _ = await db.runs.enqueue(guild, trigger="cli")
        outcome = await daemon.process(await db.runs.claim(guild, run.id))
        assert outcome.published, outcome.run.error or outcome.run.gate_reason
        return await db.versions.active(guild)

    await tracker.start()
    v1 = await train_one()
    await tracker.refresh()
    await first_token_s(bot_server, tracker.get(guild), messages, options)  # warm-up
    steady = [(await first_token_s(bot_server, tracker.get(guild), messages, options))[0] for _ in range(3)]

    v2 = await train_one()  # pointer flipped by the trainer; the bot's tracker finds it by polling
    flipped_at = (await db.fetchone("SELECT activated_at FROM active_versions WHERE guild_id=?", (guild,)))[0]
    while (current := tracker.get(guild)) is None or current.id != v2.id:
        await asyncio.sleep(0.01)
    switched_at = time.time()
    first, _ = await first_token_s(bot_server, current, messages, options)
    swap_s = switched_at - flipped_at + first
    results["swap"] = {"flip_to_first_token_s": swap_s, "detect_and_load_s": switched_at - flipped_at,
                       "first_token_after_switch_s": first, "baseline_first_token_s": statistics.median(steady),
                       "ratio": swap_s / statistics.median(steady), "v1": v1.number, "v2": v2.number}
    await tracker.stop()

    # /ask through Discord vs the server directly
    direct = []
    for _ in range(args.asks):
        t0 = time.perf_counter()
        await first_token_s(bot_server, v2, messages, options)
        direct.append(time.perf_counter() - t0)
    via_bot = []
    async with FakeDiscord() as fake:
        g = fake.add_guild("Bench")
        channel = fake.add_channel(g, "general")
        member = fake.add_member(g, "alice")
        await db.settings.set(g.id, max_tokens=args.max_tokens, temperature=0.0)
        await db.versions.activate(g.id, (await db.versions.create(
            g.id, run_id=None, adapter_path=v2.adapter_path, base_model=v2.base_model, metrics={},
            n_examples=0)).id)
        bot = GuildtuneBot(db=db, server=bot_server, options=bot_options(settings),
                           tracker=ActiveVersionTracker(db, bot_server, poll_s=60))
        await fake.start_bot(bot, token="bench-token")
        for _ in range(args.asks):
            t0 = time.perf_counter()
            rec = await fake.slash(g, channel, member, "ask", {"question": QUESTION})
            await rec.settle(timeout=600)
            via_bot.append(time.perf_counter() - t0)
        await fake.stop_bot()
    results["ask"] = {"bot_ask_s": statistics.median(via_bot), "direct_chat_s": statistics.median(direct),
                      "overhead_s": statistics.median(via_bot) - statistics.median(direct),
                      "ratio": statistics.median(via_bot) / statistics.median(direct), "n": args.asks}
    await trainer_server.close()
    await bot_server.close()
    await db.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each training run")
    parser.add_argument("--poll", type=float, default=3.0, help="the bot's version poll interval (s)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    r = asyncio.run(main(a))
    s, k = r["swap"], r["ask"]
    print(f"swap v{s['v1']}→v{s['v2']}: flip → first token {s['flip_to_first_token_s']:.2f} s "
          f"(detect+load {s['detect_and_load_s']:.2f} s, first token {s['first_token_after_switch_s']:.2f} s); "
          f"baseline first token on a loaded version {s['baseline_first_token_s']:.2f} s; "
          f"ratio {s['ratio']:.2f}x (poll interval {r['poll_s']} s)")
    print(f"/ask via Discord {k['bot_ask_s']:.3f} s vs server.chat {k['direct_chat_s']:.3f} s "
          f"(median of {k['n']}): overhead {k['overhead_s'] * 1000:.0f} ms, ratio {k['ratio']:.3f}x")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
