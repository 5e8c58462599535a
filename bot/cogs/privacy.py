"""`/forget`: a member deletes every example they contributed in this server, after confirming.

The content is wiped (the audit keeps that it happened, without the text) and the next training
run no longer sees it. The Confirm/Cancel buttons carry the member's id in their custom_id, so
they work after a restart and nobody else can press them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.custom_ids import FORGET

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

CONFIRM_TEXT = ("This deletes **every example you contributed in this server** (taught, nominated with a "
                "reaction, or corrected), your 👍/👎 votes on answers with the answers they voted into examples, "
                "and the questions you asked with /ask: their text is wiped and the next training run leaves "
                "them out. It cannot be undone. Delete them?")


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=rf"{FORGET}:(?P<user_id>[0-9]+):(?P<action>confirm|cancel)"):
    def __init__(self, user_id: int, action: str):
        confirm = action == "confirm"
        super().__init__(discord.ui.Button(
            label="Delete my examples" if confirm else "Cancel",
            style=discord.ButtonStyle.danger if confirm else discord.ButtonStyle.secondary,
            custom_id=f"{FORGET}:{user_id}:{action}"))
        self.user_id = user_id
        self.action = action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> "ForgetButton":
        return cls(int(match["user_id"]), match["action"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("Only the member who ran /forget can answer this.",
                                                    ephemeral=True)
            return False
        return True

    async def callback(self, interaction: discord.Interaction[GuildtuneBot]) -> None:
        if self.action == "cancel":
            await interaction.response.edit_message(content="Cancelled: nothing was deleted.", view=None)
            return
        gone = await interaction.client.db.examples.forget_author(interaction.guild_id, self.user_id)
        parts = [f"{n} {what}{'s' if n != 1 else ''}{where}" for n, what, where in (
            (gone.examples, "example", " you contributed"), (gone.votes, "vote", ""),
            (gone.questions, "question", " you asked")) if n]
        if not parts:
            text = "You have no examples, votes or questions in this server: nothing to delete."
        else:
            listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
            text = f"Deleted {listed}. They are left out of the next training run."
        await interaction.response.edit_message(content=text, view=None)


class PrivacyCog(commands.Cog):
    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    @app_commands.command(name="forget", description="Delete every example you contributed in this server")
    @app_commands.guild_only()
    async def forget(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(interaction.user.id, "confirm"))
        view.add_item(ForgetButton(interaction.user.id, "cancel"))
        await interaction.response.send_message(CONFIRM_TEXT, view=view, ephemeral=True)


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(PrivacyCog(bot))
