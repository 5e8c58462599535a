"""`/ask`: answer from the guild's active model version, streaming by editing the reply, and the
👍 / 👎 / ✏️ Correct buttons under every answer.

The buttons are `DynamicItem`s whose custom_id carries the answer id, so they keep working after a
restart without any per-message state. Every send and edit uses `NO_MENTIONS`: model output never
pings anyone.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from discord.utils import MISSING

from bot.checks import is_moderator
from bot.contributions import contribute
from bot.custom_ids import ANSWER
from bot.formatting import FORM_FIELD_LIMIT, NO_MENTIONS, retry_hint, shorten, split_message
from bot.replies import decision_text
from serving.prompting import guild_options
from serving.protocol import ModelServerError, ModelServerUnavailable
from storage.conversation import is_blank
from storage.records import Answer, ModelVersion

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 1.0  # Discord rate-limits edits; about one a second reads as "typing"
BASE_MODEL_NOTICE = "-# Answered by the base model: no trained version is active in this server yet."
WARMING_UP = ("I'm still warming up: the model is loading (the first start converts it, which takes "
              "a minute or two). Try again in a minute.")


def version_footer(version: ModelVersion | None) -> str:
    return BASE_MODEL_NOTICE if version is None else f"-# Answered by this server's model v{version.number}."


class AnswerStream:
    """Shows a growing answer: the reply is edited at most once per `interval` seconds, and text
    past 2,000 characters continues in follow-up messages (split without breaking code blocks)."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool, interval: float = EDIT_INTERVAL_S):
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.interval = interval
        self.messages: list[discord.InteractionMessage | discord.WebhookMessage] = []
        self.shown: list[str] = []
        self._last_show = -math.inf

    @property
    def first_message_id(self) -> int | None:
        return self.messages[0].id if self.messages else None

    async def update(self, text: str) -> None:
        if time.monotonic() - self._last_show >= self.interval:
            await self.show(text)

    async def show(self, text: str, view: discord.ui.View | None = None) -> None:
        self._last_show = time.monotonic()
        parts = split_message(text)
        for i, part in enumerate(parts):
            item_view = view if view is not None and i == len(parts) - 1 else MISSING
            if i < len(self.messages):
                if self.shown[i] != part or item_view is not MISSING:
                    await self._edit(i, part, item_view)
            else:
                await self._send(part, item_view)
        for extra in self.messages[len(parts):]:  # a re-split needed fewer messages
            await extra.delete()
        del self.messages[len(parts):], self.shown[len(parts):]

    async def _edit(self, i: int, part: str, view: Any) -> None:
        if i == 0:
            self.messages[0] = await self.interaction.edit_original_response(
                content=part, allowed_mentions=NO_MENTIONS, view=view)
        else:
            self.messages[i] = await self.messages[i].edit(content=part, allowed_mentions=NO_MENTIONS, view=view)
        self.shown[i] = part

    async def _send(self, part: str, view: Any) -> None:
        if not self.messages:
            message = await self.interaction.edit_original_response(content=part, allowed_mentions=NO_MENTIONS,
                                                                    view=view)
        else:
            message = await self.interaction.followup.send(part, ephemeral=self.ephemeral, wait=True,
                                                           allowed_mentions=NO_MENTIONS, view=view)
        self.messages.append(message)
        self.shown.append(part)


# ---------------------------------------------------------------------------------------- buttons
VOTE_LABELS = {"up": "👍", "down": "👎"}


class VoteButton(discord.ui.DynamicItem[discord.ui.Button],
                 template=rf"{ANSWER}:(?P<answer_id>[0-9]+):(?P<kind>up|down)"):
    def __init__(self, answer_id: int, kind: str):
        super().__init__(discord.ui.Button(
            emoji=VOTE_LABELS[kind], style=discord.ButtonStyle.secondary,
            custom_id=f"{ANSWER}:{answer_id}:{kind}"))
        self.answer_id = answer_id
        self.kind = kind

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> "VoteButton":
        return cls(int(match["answer_id"]), match["kind"])

    async def callback(self, interaction: discord.Interaction[GuildtuneBot]) -> None:
        bot = interaction.client
        guild_id = interaction.guild_id
        moderator = await is_moderator(bot.db, guild_id, interaction.user)
        try:
            outcome = await bot.db.answers.vote(guild_id, self.answer_id, interaction.user.id, self.kind,
                                                moderator=moderator)
        except LookupError as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        emoji = VOTE_LABELS[self.kind]
        text = {"new": f"Thanks for the {emoji}.", "changed": f"Changed your vote to {emoji}.",
                "same": f"You already gave this answer a {emoji}; it counts once."}[outcome]
        if self.kind == "up":
            text += await self._moderator_approval(bot, interaction)
        if outcome != "same":
            text += await self._preference_example(bot, interaction)
        tally = await bot.db.answers.tally(guild_id, self.answer_id)
        text += f"\n-# This answer: 👍 {tally['up']} · 👎 {tally['down']}"
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _preference_example(self, bot: "GuildtuneBot", interaction: discord.Interaction) -> str:
        """Enough net votes make the answer a pending preference example (once per answer), sent to review."""
        guild_id = interaction.guild_id
        result = await bot.db.examples.add_from_votes(guild_id, self.answer_id, await bot.db.settings.get(guild_id))
        if result is None or not result.created:
            return ""
        example = result.example
        bot.dispatch("example_pending", example, example.source_channel_id)
        liked = "liked" if example.label == "desirable" else "disliked"
        return (f"\nWith this vote the answer is {liked} enough to teach from: it is preference example "
                f"#{example.id}, pending a moderator's review.")

    async def _moderator_approval(self, bot: "GuildtuneBot", interaction: discord.Interaction) -> str:
        """A moderator's 👍 makes the question and answer an approved example (guild setting)."""
        guild_id = interaction.guild_id
        settings = await bot.db.settings.get(guild_id)
        if not settings.moderator_upvote_approves or not await is_moderator(bot.db, guild_id, interaction.user):
            return ""
        answer = await bot.db.answers.get(guild_id, self.answer_id)
        if answer is None:
            return ""
        message_ids = [interaction.message.id] if interaction.message else []
        result = await contribute(bot, guild_id, interaction.user, conversation_of(answer, answer.answer),
                                  source="reaction", source_message_ids=message_ids, answer_id=answer.id,
                                  status="approved", channel_id=interaction.channel_id)
        example = result.example
        if example is None:
            return f"\nIt could not become an example: {result.message}"
        if result.created:
            return f"\nAs a moderator you approved it as example #{example.id}."
        if example.status == "pending":
            decision = await bot.db.examples.decide(guild_id, example.id, actor_id=interaction.user.id, approve=True)
            return f"\n{decision_text(decision)}"
        return f"\nIt is already example #{example.id} ({example.status})."


class CorrectButton(discord.ui.DynamicItem[discord.ui.Button],
                    template=rf"{ANSWER}:(?P<answer_id>[0-9]+):correct"):
    def __init__(self, answer_id: int):
        super().__init__(discord.ui.Button(
            label="Correct", emoji="✏️", style=discord.ButtonStyle.secondary,
            custom_id=f"{ANSWER}:{answer_id}:correct"))
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> "CorrectButton":
        return cls(int(match["answer_id"]))

    async def callback(self, interaction: discord.Interaction[GuildtuneBot]) -> None:
        bot = interaction.client
        answer = await bot.db.answers.get(interaction.guild_id, self.answer_id)
        if answer is None:
            await interaction.response.send_message(
                f"There is no answer #{self.answer_id} in this server any more, so it cannot be corrected.",
                ephemeral=True)
            return
        message_id = interaction.message.id if interaction.message else None
        await interaction.response.send_modal(CorrectionModal(answer, message_id))


def answer_view(answer_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(answer_id, "up"))
    view.add_item(VoteButton(answer_id, "down"))
    view.add_item(CorrectButton(answer_id))
    return view


def conversation_of(answer: Answer, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": answer.question}, {"role": "assistant", "content": reply}]


class CorrectionModal(discord.ui.Modal):
    """Pre-filled with the bot's answer; the corrected pair becomes a pending example."""

    def __init__(self, answer: Answer, message_id: int | None):
        super().__init__(title="Correct this answer", timeout=900)
        self.answer = answer
        self.message_id = message_id
        cut = len(answer.answer) > FORM_FIELD_LIMIT
        self.corrected = discord.ui.TextInput(
            label=shorten("Better answer" + (" (long answer: start shown)" if cut else ""), 45),
            style=discord.TextStyle.paragraph, custom_id="answer", max_length=FORM_FIELD_LIMIT,
            default=answer.answer[:FORM_FIELD_LIMIT] or None,
            placeholder=shorten(f"To: {answer.question}", 100))
        self.add_item(self.corrected)

    async def on_submit(self, interaction: discord.Interaction[GuildtuneBot]) -> None:
        bot = interaction.client
        guild_id = interaction.guild_id
        result = await contribute(
            bot, guild_id, interaction.user, conversation_of(self.answer, self.corrected.value),
            source="correction", answer_id=self.answer.id, status="pending",
            source_message_ids=[self.message_id] if self.message_id else [], channel_id=interaction.channel_id)
        if result.example is not None:
            await bot.db.answers.record_correction(guild_id, self.answer.id, interaction.user.id, result.example.id)
        text = ("Thanks for the correction. " if result.created else "") + result.message
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


# ---------------------------------------------------------------------------------------- /ask
class AskCog(commands.Cog):
    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot
        self._last_ask: dict[tuple[int, int], float] = {}  # (guild, user) -> time.time() of the last ask
        self._running: dict[int, list[float]] = {}  # guild -> start times of the answers being written

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(VoteButton, CorrectButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(VoteButton, CorrectButton)

    @app_commands.command(name="ask", description="Ask this server's assistant a question")
    @app_commands.guild_only()
    @app_commands.describe(question="Your question", private="Only you see the answer (default: everyone)")
    async def ask(self, interaction: discord.Interaction, question: app_commands.Range[str, 1, 4000],
                  private: bool = False) -> None:
        guild_id, user_id = interaction.guild_id, interaction.user.id
        if not self.bot.tracker.ready:
            await interaction.response.send_message(WARMING_UP, ephemeral=True)
            return
        if is_blank(question):
            await interaction.response.send_message(
                "Your question is empty (only spaces or invisible characters): type the question you want answered.",
                ephemeral=True)
            return
        refusal = self._admit(guild_id, user_id)
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        started = time.time()
        self._last_ask[(guild_id, user_id)] = started
        running = self._running.setdefault(guild_id, [])
        running.append(started)
        try:
            ok = await self._answer(interaction, question, private)
        finally:
            running.remove(started)
        if not ok:  # a failed answer does not use up the member's cooldown
            self._last_ask.pop((guild_id, user_id), None)

    def _admit(self, guild_id: int, user_id: int) -> str | None:
        """Why this ask must wait (cooldown per member, concurrency cap per guild), or None."""
        options, now = self.bot.options, time.time()
        last = self._last_ask.get((guild_id, user_id))
        if last is not None and now - last < options.ask_cooldown_s:
            return f"Slow down a little: you can ask again {retry_hint(last + options.ask_cooldown_s, now)}."
        running = self._running.get(guild_id, [])
        if len(running) >= options.ask_concurrency:
            latest = min(running) + options.answer_timeout_s
            return (f"I am already writing {len(running)} answer(s) in this server (the limit is "
                    f"{options.ask_concurrency}). Try again in a few seconds; a slot frees up "
                    f"{retry_hint(latest, now)} at the latest.")
        return None

    async def _answer(self, interaction: discord.Interaction, question: str, private: bool) -> bool:
        await interaction.response.defer(thinking=True, ephemeral=private)
        guild_id = interaction.guild_id
        gs = await self.bot.db.settings.get(guild_id)
        version = self.bot.tracker.get(guild_id)
        timeout_s = self.bot.options.answer_timeout_s
        options = guild_options(gs, timeout_s)
        stream = AnswerStream(interaction, ephemeral=private)
        text, problem = "", None
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                messages = await self.bot.notes.messages(gs, version, question)
                async for piece in self.bot.server.chat(version, messages, options):
                    text += piece
                    if text.strip():
                        await stream.update(text)
        except ModelServerUnavailable as exc:
            problem = ("The model server is not answering right now, so I couldn't answer. Try again in "
                       f"a minute.\n-# {exc}")
        except ModelServerError as exc:
            problem = f"The model server could not answer this one.\n-# {exc}"
        except TimeoutError:
            problem = (f"The model did not finish within {timeout_s:g} s, so I stopped waiting. "
                       "Try again in a minute, or ask something shorter.")
        except discord.HTTPException as exc:
            log.warning("guild %s: could not show the answer: %s", guild_id, exc)
            return False
        except Exception:  # a bug or an unexpected server failure: say so, keep the bot up
            log.exception("guild %s: /ask failed unexpectedly", guild_id)
            problem = "Something went wrong while answering. Try again later; moderators can check the bot's log."
        latency_ms = int((time.monotonic() - started) * 1000)
        if problem is None and not text.strip():
            problem = "The model gave an empty answer. Try rephrasing your question."
        if problem is not None:
            log.warning("guild %s: /ask failed: %s", guild_id, problem.replace("\n", " "))
            shown = (text.rstrip() + "\n\n⚠️ The answer was cut off. " if text.strip() else "⚠️ ") + problem
            await self._show_quietly(stream, shown)
            return False
        answer = await self.bot.db.answers.record(
            guild_id, question=question, answer=text, version_id=version.id if version else None,
            latency_ms=latency_ms, user_id=interaction.user.id, channel_id=interaction.channel_id,
            message_id=stream.first_message_id)
        await stream.show(text + "\n\n" + version_footer(version), view=answer_view(answer.id))
        return True

    @staticmethod
    async def _show_quietly(stream: AnswerStream, text: str) -> None:
        try:
            await stream.show(text)
        except discord.HTTPException as exc:
            log.warning("could not tell the member that /ask failed: %s", exc)


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(AskCog(bot))
