"""Collecting examples: `/teach`, the "Teach as answer" message menu, and the 📚 reaction on a reply.

All three end in `bot.contributions.contribute`, so duplicates, validation messages and the
moderator auto-approve rule are the same whichever way a member teaches.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.contributions import contribute
from bot.formatting import FORM_FIELD_LIMIT, NO_MENTIONS, shorten
from storage.conversation import is_blank
from storage.records import Conversation

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

log = logging.getLogger(__name__)

INTENT_WARNING_EVERY_S = 600.0  # tell a guild about the missing intent at most this often

MISSING_INTENT_HELP = (
    "I could not read the text of those messages, so the {emoji} reaction did not save them: this bot "
    "runs without Discord's **Message Content** intent. The bot's owner can switch it on in the Discord "
    "Developer Portal (your application → Bot → Privileged Gateway Intents → MESSAGE CONTENT INTENT) and "
    "restart the bot. Until then, `/teach` and the \"Teach as answer\" menu still work."
)


TEACH_FIELDS = (  # custom_id, label, required
    ("prompt", "Prompt (what a member asks)", True),
    ("response", "Response (what the bot should answer)", True),
    ("system", "System prompt (optional)", False),
)


class TeachModal(discord.ui.Modal):
    """The multi-line form behind `/teach` (also pre-filled with whatever options were given).

    A form field holds at most FORM_FIELD_LIMIT characters while a command option holds up to 6,000: text
    given with the command that does not fit is kept exactly as typed and left out of the form (its first
    field says so), rather than cut to fit.
    """

    def __init__(self, cog: "TeachCog", prompt: str | None, response: str | None, system: str | None):
        super().__init__(title="Teach the bot", timeout=900)
        self.cog = cog
        given = {"prompt": prompt, "response": response, "system": system}
        self.kept = {name: text for name, text in given.items() if text and len(text) > FORM_FIELD_LIMIT}
        self.fields: dict[str, discord.ui.TextInput] = {}
        for name, label, required in TEACH_FIELDS:
            if name in self.kept:
                continue
            placeholder = None
            if self.kept and not self.fields:
                kept = ", ".join(self.kept)
                label = shorten(f"{label.split(' (')[0]} ({kept} kept as typed)", 45)
                placeholder = shorten(" ".join(f"Your {n} ({len(t):,} characters) is kept exactly as typed."
                                               for n, t in self.kept.items()), 100)
            self.fields[name] = discord.ui.TextInput(
                label=label, style=discord.TextStyle.paragraph, custom_id=name, required=required,
                default=given[name] or None, max_length=FORM_FIELD_LIMIT, placeholder=placeholder)
            self.add_item(self.fields[name])

    def text(self, name: str) -> str:
        return self.kept[name] if name in self.kept else self.fields[name].value

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.save_taught(interaction, self.text("prompt"), self.text("response"), self.text("system"))


class TeachAsAnswerModal(discord.ui.Modal):
    """Pre-filled from a reply chain; the last question and answer are editable, earlier turns kept."""

    def __init__(self, cog: "TeachCog", earlier: Conversation, prompt: str, response: str, message_ids: list[int]):
        super().__init__(title="Teach as answer", timeout=900)
        self.cog = cog
        self.earlier = earlier
        self.message_ids = message_ids
        context = f" (+{len(earlier)} earlier turns)" if earlier else ""
        self.prompt = discord.ui.TextInput(
            label=shorten(f"Question{context}", 45), style=discord.TextStyle.paragraph, custom_id="prompt",
            default=prompt[:FORM_FIELD_LIMIT] or None, max_length=FORM_FIELD_LIMIT,
            placeholder="The message being answered (type it if it is missing)")
        self.response = discord.ui.TextInput(
            label="Answer", style=discord.TextStyle.paragraph, custom_id="response",
            default=response[:FORM_FIELD_LIMIT] or None, max_length=FORM_FIELD_LIMIT)
        self.add_item(self.prompt)
        self.add_item(self.response)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        messages = [*self.earlier, {"role": "user", "content": self.prompt.value},
                    {"role": "assistant", "content": self.response.value}]
        result = await contribute(self.cog.bot, interaction.guild_id, interaction.user, messages,
                                  source="context_menu", source_message_ids=self.message_ids,
                                  channel_id=interaction.channel_id)
        await interaction.response.send_message(result.message, ephemeral=True, allowed_mentions=NO_MENTIONS)


class TeachCog(commands.Cog):
    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot
        self._intent_warned: dict[int, float] = {}
        self.teach_as_answer_menu = app_commands.ContextMenu(name="Teach as answer", callback=self.teach_as_answer)
        self.teach_as_answer_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.teach_as_answer_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.teach_as_answer_menu.name, type=self.teach_as_answer_menu.type)

    # ------------------------------------------------------------------ /teach
    @app_commands.command(name="teach", description="Teach the bot how to answer something")
    @app_commands.guild_only()
    @app_commands.describe(prompt="What a member would ask (leave out to open a multi-line form)",
                           response="What the bot should answer",
                           system="Optional system prompt for this example")
    async def teach(self, interaction: discord.Interaction, prompt: str | None = None,
                    response: str | None = None, system: str | None = None) -> None:
        if prompt is None or response is None:
            await interaction.response.send_modal(TeachModal(self, prompt, response, system))
            return
        await self.save_taught(interaction, prompt, response, system)

    async def save_taught(self, interaction: discord.Interaction, prompt: str, response: str,
                          system: str | None) -> None:
        messages: Conversation = []
        if system and not is_blank(system):
            messages.append({"role": "system", "content": system})
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        result = await contribute(self.bot, interaction.guild_id, interaction.user, messages, source="teach",
                                  channel_id=interaction.channel_id)
        await interaction.response.send_message(result.message, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # ------------------------------------------------------------------ "Teach as answer"
    async def teach_as_answer(self, interaction: discord.Interaction, message: discord.Message) -> None:
        settings = await self.bot.db.settings.get(interaction.guild_id)
        chain = [message]
        while len(chain) < max(2, settings.max_turns):
            earlier = await self._replied_to(chain[0])
            if earlier is None or not earlier.content.strip():
                break  # deleted, unreadable (no content intent) or text-less: the chain starts after it
            chain.insert(0, earlier)
        if len(chain) % 2:  # a conversation starts with the user's turn
            chain = chain[1:] if len(chain) > 1 else chain
        turns: Conversation = [
            {"role": "assistant" if i % 2 == (len(chain) - 1) % 2 else "user", "content": m.content}
            for i, m in enumerate(chain)
        ]
        if len(chain) == 1:  # not a reply: the member types the question
            prompt, earlier_turns = "", []
        else:
            prompt, earlier_turns = turns[-2]["content"], turns[:-2]
        await interaction.response.send_modal(TeachAsAnswerModal(
            self, earlier_turns, prompt, message.content, [m.id for m in chain]))

    async def _replied_to(self, message: discord.Message) -> discord.Message | None:
        """The message `message` replies to (fetched if Discord did not include it), or None."""
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        if isinstance(ref.resolved, discord.Message):
            return ref.resolved
        if isinstance(ref.resolved, discord.DeletedReferencedMessage):
            return None
        try:
            channel = self.bot.get_channel(ref.channel_id) or await self.bot.fetch_channel(ref.channel_id)
            return await channel.fetch_message(ref.message_id)  # type: ignore[union-attr]
        except (discord.NotFound, discord.Forbidden):
            return None

    # ------------------------------------------------------------------ 📚 reaction on a reply
    @commands.Cog.listener("on_raw_reaction_add")
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None or self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return
        settings = await self.bot.db.settings.get(payload.guild_id)
        if str(payload.emoji) != settings.reaction_emoji:
            return
        try:
            channel = self.bot.get_channel(payload.channel_id) or await self.bot.fetch_channel(payload.channel_id)
            reply = await channel.fetch_message(payload.message_id)  # type: ignore[union-attr]
        except (discord.NotFound, discord.Forbidden) as exc:
            log.info("guild %s: cannot read the reacted message %s (%s)", payload.guild_id, payload.message_id, exc)
            return
        question = await self._replied_to(reply)
        if question is None:
            return  # only a reply makes a question/answer pair
        if self._unreadable(question) or self._unreadable(reply):
            await self._explain_missing_intent(channel, payload, settings.reaction_emoji)
            return
        pair = [question.id, reply.id]
        existing = await self.bot.db.examples.find_by_source_messages(payload.guild_id, "reaction", pair)
        if existing is not None:
            await self.bot.db.examples.vote(payload.guild_id, existing.id, payload.user_id)
            return
        reactor = payload.member or discord.Object(payload.user_id)
        result = await contribute(
            self.bot, payload.guild_id, reactor,  # type: ignore[arg-type]
            [{"role": "user", "content": question.content}, {"role": "assistant", "content": reply.content}],
            source="reaction", source_message_ids=pair, status="pending", channel_id=payload.channel_id)
        if result.example is None:
            log.info("guild %s: %s on message %s not saved: %s", payload.guild_id, settings.reaction_emoji,
                     reply.id, result.message)
            return
        await self.bot.db.examples.vote(payload.guild_id, result.example.id, payload.user_id)

    def _unreadable(self, message: discord.Message) -> bool:
        """Empty text with nothing else attached: what Discord sends without the content intent."""
        if self.bot.intents.message_content or (self.bot.user and message.author.id == self.bot.user.id):
            return False
        return not (message.content or message.attachments or message.embeds or message.stickers)

    async def _explain_missing_intent(self, channel, payload: discord.RawReactionActionEvent, emoji: str) -> None:
        log.warning("guild %s: a %s reaction could not be captured because the MESSAGE CONTENT intent is "
                    "off; enable it in the Developer Portal (Bot > Privileged Gateway Intents)",
                    payload.guild_id, emoji)
        now = time.monotonic()
        last = self._intent_warned.get(payload.guild_id)
        if last is not None and now - last < INTENT_WARNING_EVERY_S:
            return
        self._intent_warned[payload.guild_id] = now
        text = f"<@{payload.user_id}> " + MISSING_INTENT_HELP.format(emoji=emoji)
        try:
            await channel.send(text, allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(payload.user_id)]))
        except discord.HTTPException as exc:
            log.warning("could not tell guild %s about the missing intent: %s", payload.guild_id, exc)


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(TeachCog(bot))
