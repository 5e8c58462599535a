"""Who may do what. Checked inside every handler, not only by hiding commands."""
from __future__ import annotations

import discord

from storage.db import Database

REFUSAL = ("Only moderators can do this: you need the Manage Server permission or one of this "
           "server's moderator roles (`/config show` lists them).")


async def is_moderator(db: Database, guild_id: int | None, member: discord.abc.User | None) -> bool:
    if guild_id is None or not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.manage_guild:
        return True
    settings = await db.settings.get(guild_id)
    return any(role.id in settings.moderator_role_ids for role in member.roles)


async def ensure_moderator(interaction: discord.Interaction) -> bool:
    """True for moderators; otherwise answers the interaction with an ephemeral refusal."""
    db: Database = interaction.client.db  # type: ignore[attr-defined]
    if await is_moderator(db, interaction.guild_id, interaction.user):
        return True
    if interaction.response.is_done():
        await interaction.followup.send(REFUSAL, ephemeral=True)
    else:
        await interaction.response.send_message(REFUSAL, ephemeral=True)
    return False
