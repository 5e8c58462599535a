"""Who may do what. Checked on the server when a command or a button runs, not only by hiding commands.

Slash commands for moderators carry `@moderator_only()` (an `app_commands` check, RoboDanny's
checks.py style): it runs before the handler, and the bot's tree error handler answers a refused
member (bot/bot.py). Buttons and forms, which have no checks of their own, call `ensure_moderator`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from storage.db import Database

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

REFUSAL = ("Only moderators can do this: you need the Manage Server permission or one of this "
           "server's moderator roles (`/config show` lists them).")


class NotModerator(app_commands.CheckFailure):
    """A moderator's slash command run by someone else; its message is the refusal shown to them."""


async def is_moderator(db: Database, guild_id: int | None, member: discord.abc.User | None) -> bool:
    if guild_id is None or not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.manage_guild:
        return True
    settings = await db.settings.get(guild_id)
    return any(role.id in settings.moderator_role_ids for role in member.roles)


def moderator_only():
    """The check of every moderator slash command: a non-moderator gets `REFUSAL` and the handler never runs."""
    async def predicate(interaction: discord.Interaction["GuildtuneBot"]) -> bool:
        if await is_moderator(interaction.client.db, interaction.guild_id, interaction.user):
            return True
        raise NotModerator(REFUSAL)

    return app_commands.check(predicate)


async def ensure_moderator(interaction: discord.Interaction["GuildtuneBot"]) -> bool:
    """For buttons and forms: True for moderators; otherwise answers the interaction with the refusal."""
    if await is_moderator(interaction.client.db, interaction.guild_id, interaction.user):
        return True
    await refuse(interaction, REFUSAL)
    return False


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """Tell only the member who acted why not (a reply, or a follow-up when the interaction has one)."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)
