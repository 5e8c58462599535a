"""The Bot subclass: holds the database, the active-version tracker (and through it the model
server, which may arrive after the bot has connected), and loads one extension per feature."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import NotModerator, refuse
from serving.protocol import ModelServer
from serving.prompting import GuildNotes
from serving.version_tracker import ActiveVersionTracker
from storage.db import Database

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.teach", "bot.cogs.ask", "bot.cogs.review", "bot.cogs.admin", "bot.cogs.privacy",
              "bot.cogs.training_progress")


def default_intents(message_content: bool = True) -> discord.Intents:
    """Guilds, messages and reactions; message content (privileged) for reaction capture."""
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = False
    return intents


@dataclass(frozen=True)
class BotOptions:
    """What the bot reads of the settings (guildtune/runtime.py builds it)."""

    #: GUILDTUNE_ASK_COOLDOWN: seconds a member waits between two /ask
    ask_cooldown_s: float
    #: GUILDTUNE_ASK_CONCURRENCY: answers generated at once per server
    ask_concurrency: int
    #: GUILDTUNE_ANSWER_TIMEOUT: seconds an answer may take
    answer_timeout_s: float
    #: GUILDTUNE_VERSION_POLL: seconds between looks at which version is active
    version_poll_s: float
    #: GUILDTUNE_DEV_GUILD: sync the commands to this server only (instant, for development)
    dev_guild_id: int | None = None


class GuildtuneTree(app_commands.CommandTree):
    """The one error handler of the slash commands: a failed check (a non-moderator) is answered with its
    reason; anything else is logged as discord.py does."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, NotModerator):
            await refuse(interaction, str(error))
            return
        await super().on_error(interaction, error)


class GuildtuneBot(commands.Bot):
    def __init__(self, *, db: Database, options: BotOptions, server: ModelServer | None = None,
                 tracker: ActiveVersionTracker | None = None, message_content: bool = True,
                 extensions: Iterable[str] = EXTENSIONS):
        super().__init__(command_prefix=commands.when_mentioned, intents=default_intents(message_content),
                         chunk_guilds_at_startup=False, tree_cls=GuildtuneTree,
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None)
        if tracker is not None and server is not None and tracker.server is not server:
            raise ValueError("pass the model server or a tracker that holds it, not two different ones")
        self.db = db
        self.options = options
        self.tracker = tracker or ActiveVersionTracker(db, server, poll_s=options.version_poll_s)
        self.notes = GuildNotes(db)  # the taught answers shown beside a question (serving/notes.py)
        self.message_content_enabled = message_content
        self.extension_names = tuple(extensions)  # tests may load a subset; the CLI loads them all

    @property
    def server(self) -> ModelServer | None:
        """The model server; None while start-up is still making it (see `tracker.ready`)."""
        return self.tracker.server

    async def setup_hook(self) -> None:
        for ext in self.extension_names:
            await self.load_extension(ext)
        await self.tracker.start()
        if self.options.dev_guild_id:
            guild = discord.Object(self.options.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def close(self) -> None:
        await self.tracker.stop()
        await super().close()

    async def on_ready(self) -> None:
        log.info("logged in as %s in %d guild(s)", self.user, len(self.guilds))
