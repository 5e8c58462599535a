"""Training progress in the review channel: one message per run, kept up to date while it trains.

The trainer is another process and writes its progress into the database; this cog owns the
background `ProgressReporter` (bot/progress.py) that polls it, so the poller starts and stops with
the extension, apart from the moderators' commands.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from discord.ext import commands

from bot.progress import ProgressReporter

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot


class TrainingProgress(commands.Cog):
    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot
        self.reporter = ProgressReporter(bot)

    async def cog_load(self) -> None:
        self.reporter.start()

    async def cog_unload(self) -> None:
        await self.reporter.stop()


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(TrainingProgress(bot))
