"""A started guildtune bot for tests: temp SQLite db + Ollama stand-in (answered through the real
`OllamaServer`) + `FakeDiscord` + a `GuildtuneBot`, all torn down cleanly.

Why: every bot test needs the same world, and the bot must be driven through discord.py's own
dispatch (see tests/discord_standin). Nothing here calls a cog function directly.

The `world` fixture (import it into your test module so pytest finds it)::

    from tests.bot_harness import world  # noqa: F401  (pytest fixture)

    async def test_teach(world):
        rec = await world.fake.slash(world.guild, world.channel, world.member, "teach",
                                     {"prompt": "Where?", "response": "Here."})
        assert "#1" in rec.text
        assert (await world.db.examples.get(world.guild.id, 1)).status == "pending"

Other options: build your own with `start_world` (an async context manager)::

    from tests.bot_harness import start_world

    async def test_no_intent(tmp_path):
        async with start_world(tmp_path, message_content=False, settings={"ask_cooldown_s": 5},
                               before_start=lambda w: w.fake.add_channel(w.guild, "extra")) as w:
            ...

`start_world(tmp_path, *, settings=None, guild_settings=None, message_content=True,
portal_message_content=None, extensions=None, before_start=None, fail_on_bot_errors=True)`:
- settings: overrides for `guildtune.settings.Settings` (field names, e.g. ask_cooldown_s); the
  defaults here suit tests (no cooldown, 5 s answer timeout, concurrency 4, slow version polling).
  `ollama_base_tag` picks the stand-in's base model (default gemma3:270m; "llama3.2:1b" takes
  LoRA adapters directly, the cheap way to publish a real version in a bot test).
- guild_settings: `db.settings.set(guild.id, **guild_settings)` before the bot starts.
- message_content: whether the bot asks for the message-content intent;
  portal_message_content: whether the application has it (default: same as message_content).
  Both False = the intent is off in the Developer Portal: others' message content arrives empty.
- extensions: the cogs to load (default: every one of bot.bot.EXTENSIONS that exists yet).
- before_start(world): add guilds/channels/members/roles (the world must be built before READY).
- fail_on_bot_errors: on exit, fail if discord.py logged an ERROR (an exception in a handler).

BotWorld fields: fake (FakeDiscord), ollama (OllamaStandIn: `scripted_replies`, `delay_s`,
`go_down()`, `come_back()`), server (OllamaServer), db (Database), settings (Settings), bot
(GuildtuneBot), guild, channel (#general), review_channel (#review, not configured as the review
channel until you `await world.configure(review_channel_id=world.review_channel.id)`), member
(alice) and other (bob), both plain members, mod (Manage Server), tmp_path.
Methods: `await configure(**guild_settings)`, `script(question, reply)`, `await restart_bot()`
(same db, server and Discord; a fresh GuildtuneBot, as after a process restart),
`examples(status=None)`, `await ask(user, question, **options)` (runs /ask and waits until the
bot finished), `answer_messages(record)` (the bot's messages of one /ask, in order).
"""
from __future__ import annotations

import importlib.util
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import discord
import pytest

from bot.bot import EXTENSIONS, GuildtuneBot
from guildtune.runtime import bot_options
from guildtune.settings import Settings
from serving.ollama_server import OllamaServer
from storage.db import Database
from storage.records import Example, GuildSettings
from tests.discord_standin import FakeChannel, FakeDiscord, FakeGuild, FakeMember, InteractionRecord
from tests.discord_standin.world import FakeMessage
from tests.ollama_standin import OllamaStandIn

BASE_TAG = "gemma3:270m"
TOKEN = "harness-secret-token-do-not-log"

TEST_SETTINGS: dict[str, Any] = {
    "ask_cooldown_s": 0.0,
    "ask_concurrency": 4,
    "answer_timeout_s": 5.0,
    "version_poll_s": 60.0,
    "trainer_poll_s": 60.0,
}


def available_extensions(names: Iterable[str] = EXTENSIONS) -> list[str]:
    """The cogs among `names` whose module exists (other helpers add theirs while we work)."""
    return [name for name in names if importlib.util.find_spec(name) is not None]


@dataclass
class BotWorld:
    fake: FakeDiscord
    ollama: OllamaStandIn
    server: OllamaServer
    db: Database
    settings: Settings
    guild: FakeGuild
    channel: FakeChannel
    review_channel: FakeChannel
    member: FakeMember
    other: FakeMember
    mod: FakeMember
    tmp_path: Path
    extensions: tuple[str, ...]
    message_content: bool
    bot: GuildtuneBot | None = None

    def new_bot(self) -> GuildtuneBot:
        return GuildtuneBot(db=self.db, server=self.server, options=bot_options(self.settings),
                            message_content=self.message_content, extensions=self.extensions)

    async def restart_bot(self) -> GuildtuneBot:
        """Stop the bot and start a fresh one on the same db, server and Discord (a process restart)."""
        await self.fake.stop_bot()
        self.bot = self.new_bot()
        await self.fake.start_bot(self.bot, token=TOKEN)
        return self.bot

    async def configure(self, **values: Any) -> GuildSettings:
        return await self.db.settings.set(self.guild.id, **values)

    def script(self, question: str, reply: str) -> None:
        """Make the model answer `question` with exactly `reply`."""
        self.ollama.scripted_replies[question] = reply

    async def examples(self, status: str | None = None) -> list[Example]:
        return await self.db.examples.list(self.guild.id, status=status)

    async def ask(self, user: FakeMember, question: str, *, timeout: float = 15.0,
                  **options: Any) -> InteractionRecord:
        """/ask as `user`, then wait until the bot has finished answering (streaming included)."""
        rec = await self.fake.slash(self.guild, self.channel, user, "ask", {"question": question, **options},
                                    timeout=timeout)
        await rec.settle(timeout)
        return rec

    @staticmethod
    def answer_messages(rec: InteractionRecord) -> list[FakeMessage]:
        """The messages an /ask produced (the reply, then follow-ups), as they are now."""
        msgs = ([rec.message] if rec.message is not None else []) + list(rec.followups)
        return [m for m in msgs if not m.deleted]


def make_settings(tmp_path: Path, overrides: dict[str, Any] | None = None) -> Settings:
    values = {**TEST_SETTINGS, "data_dir": tmp_path / "data", "db": tmp_path / "guildtune.db",
              "server": "ollama", "ollama_base_tag": BASE_TAG, **(overrides or {})}
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def start_world(
    tmp_path: Path,
    *,
    settings: dict[str, Any] | None = None,
    guild_settings: dict[str, Any] | None = None,
    message_content: bool = True,
    portal_message_content: bool | None = None,
    extensions: Iterable[str] | None = None,
    before_start: Callable[[BotWorld], Any] | None = None,
    fail_on_bot_errors: bool = True,
) -> AsyncIterator[BotWorld]:
    """A started bot in a world with one guild; everything is stopped on exit."""
    cfg = make_settings(tmp_path, settings)
    db = await Database.open(cfg.db_path)
    ollama = OllamaStandIn()
    await ollama.start()
    server = OllamaServer(ollama.url, base_tag=cfg.ollama_base_tag, tag_prefix=cfg.tag_prefix,
                          timeout_s=cfg.answer_timeout_s, work_dir=tmp_path / "ollama-staging")
    portal = message_content if portal_message_content is None else portal_message_content
    try:
        async with FakeDiscord(message_content_intent=portal) as fake:
            guild = fake.add_guild("Guild")
            world = BotWorld(
                fake=fake, ollama=ollama, server=server, db=db, settings=cfg, guild=guild,
                channel=fake.add_channel(guild, "general"), review_channel=fake.add_channel(guild, "review"),
                member=fake.add_member(guild, "alice"), other=fake.add_member(guild, "bob"),
                mod=fake.add_member(guild, "mod", permissions=discord.Permissions(manage_guild=True)),
                tmp_path=tmp_path,
                extensions=tuple(available_extensions() if extensions is None else extensions),
                message_content=message_content,
            )
            if guild_settings:
                await world.configure(**guild_settings)
            if before_start is not None:
                result = before_start(world)
                if hasattr(result, "__await__"):
                    await result
            world.bot = world.new_bot()
            await fake.start_bot(world.bot, token=TOKEN)
            yield world
            await fake.settle()
            if fail_on_bot_errors and fake.bot_errors:
                raise AssertionError("the bot logged errors:\n" + "\n".join(fake.bot_errors))
    finally:
        await server.close()
        await ollama.stop()
        await db.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[BotWorld]:
    """A started bot with the test defaults (see the module docstring)."""
    async with start_world(tmp_path) as w:
        yield w
