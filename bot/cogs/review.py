"""Moderator review: the `/review` card, the review channel's posts, and ✅/❌ reactions on them.

Every path ends in `db.examples.decide`, which is atomic: when two moderators decide the same
example at once, one wins and the other is told who decided first. Buttons are persistent
`DynamicItem`s whose custom id carries the example id, so posts keep working after a restart.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import ensure_moderator, is_moderator, moderator_only
from bot.custom_ids import REVIEW
from bot.formatting import FORM_FIELD_LIMIT
from bot.replies import decision_text, refusal_text
from storage.conversation import InvalidConversation
from storage.examples import Decision, ExampleError
from storage.records import Conversation, Example

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

log = logging.getLogger(__name__)

APPROVE_EMOJI = "✅"
REJECT_EMOJI = "❌"
EMBED_TEXT_BUDGET = 3600  # of the description's 4,096; the rest is headings and the cut note
MODAL_MAX_FIELDS = 5
ROLE_NAMES = {"system": "System prompt", "user": "User", "assistant": "Assistant"}
COLOURS = {"pending": discord.Colour.blurple(), "approved": discord.Colour.green(),
           "rejected": discord.Colour.red(), "deleted": discord.Colour.dark_grey()}


# ---------------------------------------------------------------------------------------------- rendering
def jump_url(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


def conversation_text(messages: Conversation, budget: int = EMBED_TEXT_BUDGET) -> str:
    """The conversation as `**User:** …` paragraphs; past `budget` characters it is cut with a note
    saying how much is hidden (the Edit form shows every message in full)."""
    parts = [f"**{ROLE_NAMES.get(m['role'], m['role'])}:** {m['content']}" for m in messages]
    text = "\n\n".join(parts)
    if len(text) <= budget:
        return text
    hidden = len(text) - budget
    return text[:budget] + f"…\n\n*({hidden:,} more characters not shown here; Edit shows everything.)*"


PREFERENCE_TITLES = {"desirable": "👍 liked answer", "undesirable": "👎 disliked answer"}


def example_embed(example: Example, *, source_channel_id: int | None = None, pending: int | None = None,
                  decided_by: int | None = None, reason: str | None = None,
                  votes: tuple[int, int] | None = None) -> discord.Embed:
    """The card for one example: content, author, source, jump links, and its decision if any.
    A preference example (votes under an answer) also says whether it is liked or disliked and
    shows the answer's 👍/👎 counts (`votes`)."""
    title = f"Example #{example.id} · {example.status}"
    if example.label is not None:
        title += f" · {PREFERENCE_TITLES[example.label]}"
    embed = discord.Embed(title=title, description=conversation_text(example.messages),
                          colour=COLOURS.get(example.status, discord.Colour.default()))
    author = "Asked by" if example.label is not None else "Author"
    embed.add_field(name=author, value=f"<@{example.author_id}>" if example.author_id else "unknown (import)")
    source = example.source.replace("_", " ")
    if example.source_message_ids:
        if source_channel_id is not None:
            links = " ".join(f"[message {i}]({jump_url(example.guild_id, source_channel_id, m)})"
                             for i, m in enumerate(example.source_message_ids, 1))
        else:
            links = ", ".join(str(m) for m in example.source_message_ids)
            links = f"message id(s) {links}"
        source = f"{source} · {links}"
    embed.add_field(name="Source", value=source[:1024])
    if example.label is not None:
        counts = f" · 👍 {votes[0]} · 👎 {votes[1]}" if votes is not None else ""
        teaches = ("approved, the model is taught to answer like this" if example.label == "desirable"
                   else "approved, the model is taught not to answer like this")
        embed.add_field(name="Votes", value=f"answer #{example.answer_id}{counts}\n-# {teaches}")
    elif example.answer_id:
        embed.add_field(name="Corrects", value=f"answer #{example.answer_id}")
    if example.status in ("approved", "rejected") and decided_by is not None:
        verb = "Approved" if example.status == "approved" else "Rejected"
        mark = APPROVE_EMOJI if example.status == "approved" else REJECT_EMOJI
        decision = f"{mark} {verb} by <@{decided_by}>"
        if reason:
            decision += f"\nReason: {reason}"
        embed.add_field(name="Decision", value=decision[:1024], inline=False)
    if pending is not None:
        embed.set_footer(text=f"{pending} pending example{'s' if pending != 1 else ''} left to review")
    return embed


# ---------------------------------------------------------------------------------------------- buttons
class ReviewButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=rf"{REVIEW}:(?P<action>approve|edit|reject|skip):(?P<example_id>\d+):(?P<where>card|post)"):
    """Approve / Edit / Reject / Skip for one example, on a `/review` card or a review-channel post."""

    STYLES = {"approve": (discord.ButtonStyle.success, "Approve", APPROVE_EMOJI),
              "edit": (discord.ButtonStyle.primary, "Edit", "✏️"),
              "reject": (discord.ButtonStyle.danger, "Reject", REJECT_EMOJI),
              "skip": (discord.ButtonStyle.secondary, "Skip", "⏭️")}

    def __init__(self, action: str, example_id: int, where: str):
        style, label, emoji = self.STYLES[action]
        super().__init__(discord.ui.Button(style=style, label=label, emoji=emoji,
                                           custom_id=f"{REVIEW}:{action}:{example_id}:{where}"))
        self.action = action
        self.example_id = example_id
        self.where = where

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item,
                             match: re.Match[str], /) -> "ReviewButton":
        return cls(match["action"], int(match["example_id"]), match["where"])

    async def callback(self, interaction: discord.Interaction[GuildtuneBot]) -> None:
        cog: Review | None = interaction.client.get_cog("Review")
        if cog is not None:
            await cog.on_review_button(interaction, self.action, self.example_id, self.where)


def review_view(example_id: int, where: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)  # never times out: a timeout would unregister the dynamic items
    actions = ("approve", "edit", "reject", "skip") if where == "card" else ("approve", "edit", "reject")
    for action in actions:
        view.add_item(ReviewButton(action, example_id, where))
    return view


# ---------------------------------------------------------------------------------------------- modals
def editable_slice(messages: Conversation) -> int:
    """Index of the first message the Edit form shows: the last five (Discord's limit per form)."""
    return max(0, len(messages) - MODAL_MAX_FIELDS)


def field_label(messages: Conversation, index: int) -> str:
    role = messages[index]["role"]
    if role == "system":
        return "System prompt (empty: none)"
    turn = sum(1 for m in messages[: index + 1] if m["role"] == "user")
    return f"{ROLE_NAMES[role]} (turn {turn})"


class EditExampleModal(discord.ui.Modal):
    """The example's messages, pre-filled; submitting saves the edit and approves."""

    def __init__(self, cog: "Review", example: Example, where: str):
        first = editable_slice(example.messages)
        shown = "" if first == 0 else f" (last {MODAL_MAX_FIELDS} messages)"
        super().__init__(title=f"Edit example #{example.id}{shown}"[:45], timeout=900,
                         custom_id=f"{REVIEW}-edit:{example.id}:{where}")
        self.cog = cog
        self.example = example
        self.where = where
        self.first = first
        self.inputs: list[discord.ui.TextInput] = []
        for i in range(first, len(example.messages)):
            message = example.messages[i]
            text_input = discord.ui.TextInput(
                label=field_label(example.messages, i), style=discord.TextStyle.paragraph,
                default=message["content"], required=message["role"] != "system",
                max_length=FORM_FIELD_LIMIT, custom_id=f"m{i}")
            self.inputs.append(text_input)
            self.add_item(text_input)

    def edited_messages(self) -> Conversation:
        messages = [dict(m) for m in self.example.messages]
        for offset, text_input in enumerate(self.inputs):
            messages[self.first + offset]["content"] = text_input.value
        return [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.decide(interaction, self.example.id, approve=True, where=self.where,
                              messages=self.edited_messages())


class RejectModal(discord.ui.Modal):
    """An optional reason, kept in the audit log and shown on the post."""

    def __init__(self, cog: "Review", example_id: int, where: str):
        super().__init__(title=f"Reject example #{example_id}", timeout=900,
                         custom_id=f"{REVIEW}-reject:{example_id}:{where}")
        self.cog = cog
        self.example_id = example_id
        self.where = where
        self.reason = discord.ui.TextInput(label="Reason (optional)", style=discord.TextStyle.paragraph,
                                           required=False, max_length=500, custom_id="reason",
                                           placeholder="Why this should not be learned")
        self.add_item(self.reason)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.decide(interaction, self.example_id, approve=False, where=self.where,
                              reason=self.reason.value.strip() or None)


# ---------------------------------------------------------------------------------------------- the cog
class Review(commands.Cog):
    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReviewButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReviewButton)

    # --- shared helpers -------------------------------------------------------------------------
    async def source_channel(self, example: Example) -> int | None:
        """Where the example's source messages are, when we know (stored since V3; older corrections:
        the answer's channel)."""
        if example.source_channel_id is not None:
            return example.source_channel_id
        if example.answer_id:
            answer = await self.bot.db.answers.get(example.guild_id, example.answer_id)
            if answer is not None:
                return answer.channel_id
        return None

    async def votes(self, example: Example) -> tuple[int, int] | None:
        """(👍, 👎) under the answer a preference example came from; None for other examples."""
        if example.label is None or example.answer_id is None:
            return None
        tally = await self.bot.db.answers.tally(example.guild_id, example.answer_id)
        return tally["up"], tally["down"]

    async def card(self, guild_id: int, *, after_id: int = 0) -> tuple[discord.Embed | None, discord.ui.View | None,
                                                                       str | None]:
        """The next pending example after `after_id` (wrapping to the oldest), as embed + buttons."""
        example, pending = await self.bot.db.examples.next_pending(guild_id, after_id=after_id)
        note = None
        if example is None and pending and after_id:
            example, pending = await self.bot.db.examples.next_pending(guild_id, after_id=0)
            note = "That was the newest pending example; back to the oldest."
        if example is None:
            return None, None, None
        embed = example_embed(example, source_channel_id=await self.source_channel(example), pending=pending,
                              votes=await self.votes(example))
        return embed, review_view(example.id, "card"), note

    async def update_posts(self, example: Example, decided_by: int, reason: str | None,
                           skip_message_id: int | None = None) -> None:
        """Show the decision on every review-channel post of this example and remove its buttons."""
        embed = example_embed(example, source_channel_id=await self.source_channel(example),
                              decided_by=decided_by, reason=reason, votes=await self.votes(example))
        for channel_id, message_id in await self.bot.db.examples.review_posts(example.guild_id, example.id):
            if message_id == skip_message_id:
                continue
            channel = self.bot.get_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                continue
            try:
                await channel.get_partial_message(message_id).edit(  # type: ignore[attr-defined]
                    embed=embed, view=None, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.warning("could not update review post %s for example #%s: %s", message_id, example.id, exc)

    # --- /review ----------------------------------------------------------------------------------
    @app_commands.command(name="review", description="Moderators: review pending examples one by one.")
    @app_commands.guild_only()
    @moderator_only()
    async def review(self, interaction: discord.Interaction) -> None:
        embed, view, _ = await self.card(interaction.guild_id)
        if embed is None:
            await interaction.response.send_message("Nothing to review: there are no pending examples.",
                                                    ephemeral=True)
            return
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    # --- buttons ------------------------------------------------------------------------------------
    async def on_review_button(self, interaction: discord.Interaction, action: str, example_id: int,
                               where: str) -> None:
        if not await ensure_moderator(interaction):
            return
        guild_id = interaction.guild_id
        if action == "skip":
            embed, view, note = await self.card(guild_id, after_id=example_id)
            if embed is None:
                await interaction.response.edit_message(content="All caught up: nothing left to review.",
                                                        embed=None, view=None)
            else:
                await interaction.response.edit_message(content=note, embed=embed, view=view)
            return
        example = await self.bot.db.examples.get(guild_id, example_id)
        if example is None:
            await interaction.response.send_message(
                f"There is no example #{example_id} in this server (it may have been removed).", ephemeral=True)
            return
        if example.status != "pending":
            # Decided meanwhile: decide() says by whom, without changing anything.
            await self.decide(interaction, example_id, approve=action == "approve", where=where)
            return
        if action == "approve":
            await self.decide(interaction, example_id, approve=True, where=where)
        elif action == "reject":
            await interaction.response.send_modal(RejectModal(self, example_id, where))
        elif action == "edit":
            too_long = [i + 1 for i, m in enumerate(example.messages)
                        if i >= editable_slice(example.messages) and len(m["content"]) > FORM_FIELD_LIMIT]
            if too_long:
                await interaction.response.send_message(
                    f"Message {', '.join(map(str, too_long))} of example #{example_id} is longer than the "
                    f"{FORM_FIELD_LIMIT:,} characters a Discord form can hold, so it can't be edited here. "
                    "Approve or reject it as it is.", ephemeral=True)
                return
            await interaction.response.send_modal(EditExampleModal(self, example, where))

    async def decide(self, interaction: discord.Interaction, example_id: int, *, approve: bool, where: str,
                     reason: str | None = None, messages: Conversation | None = None) -> None:
        """Record the decision, then update the card (next example) or the post (decision shown)."""
        if not await ensure_moderator(interaction):
            return
        try:
            decision: Decision = await self.bot.db.examples.decide(
                interaction.guild_id, example_id, actor_id=interaction.user.id, approve=approve,
                reason=reason, messages=messages)
        except (ExampleError, InvalidConversation) as exc:
            await interaction.response.send_message(refusal_text(exc), ephemeral=True)
            return
        clicked = interaction.message.id if interaction.message is not None else None
        if decision.ok:
            await self.update_posts(decision.example, interaction.user.id, reason,
                                    skip_message_id=clicked if where == "post" else None)
        notice = (f"{APPROVE_EMOJI if approve else REJECT_EMOJI} {decision_text(decision)}" if decision.ok
                  else f"⚠️ {decision_text(decision)}")
        if where == "card":
            # Still pending (e.g. the edit duplicated another example): show it again; else the next one.
            after_id = example_id - 1 if decision.example.status == "pending" else example_id
            embed, view, note = await self.card(interaction.guild_id, after_id=after_id)
            if embed is None:
                await interaction.response.edit_message(
                    content=f"{notice}\nAll caught up: nothing left to review.", embed=None, view=None)
            else:
                content = notice if note is None else f"{notice}\n{note}"
                await interaction.response.edit_message(content=content, embed=embed, view=view)
            return
        if decision.ok and interaction.message is not None:
            embed = example_embed(decision.example, source_channel_id=await self.source_channel(decision.example),
                                  decided_by=interaction.user.id, reason=reason,
                                  votes=await self.votes(decision.example))
            await interaction.response.edit_message(embed=embed, view=None)
        else:
            await interaction.response.send_message(decision_text(decision), ephemeral=True)

    # --- the review channel ----------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_example_pending(self, example: Example, source_channel_id: int | None = None) -> None:
        """A new pending example (dispatched by the teach/ask cogs): post it in the review channel."""
        if example.status != "pending":
            return
        settings = await self.bot.db.settings.get(example.guild_id)
        if settings.review_channel_id is None:
            return
        channel = self.bot.get_channel(settings.review_channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            log.warning("guild %s: review channel %s not found; example #%s not posted",
                        example.guild_id, settings.review_channel_id, example.id)
            return
        if source_channel_id is None:
            source_channel_id = await self.source_channel(example)
        embed = example_embed(example, source_channel_id=source_channel_id, votes=await self.votes(example))
        embed.set_footer(text=f"Moderators: use the buttons, or react {APPROVE_EMOJI} to approve / "
                              f"{REJECT_EMOJI} to reject.")
        try:
            message = await channel.send(embed=embed, view=review_view(example.id, "post"),
                                         allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("guild %s: cannot post example #%s in the review channel: %s",
                        example.guild_id, example.id, exc)
            return
        await self.bot.db.examples.add_review_post(example.guild_id, example.id, channel.id, message.id)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """✅/❌ from a moderator on a review post decides its example."""
        emoji = str(payload.emoji)
        if payload.guild_id is None or emoji not in (APPROVE_EMOJI, REJECT_EMOJI):
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return
        example = await self.bot.db.examples.example_for_review_post(payload.guild_id, payload.message_id)
        if example is None or example.status != "pending":
            return
        if not await is_moderator(self.bot.db, payload.guild_id, payload.member):
            return  # a member's reaction is just a reaction
        approve = emoji == APPROVE_EMOJI
        decision = await self.bot.db.examples.decide(payload.guild_id, example.id, actor_id=payload.user_id,
                                                     approve=approve, reason=None)
        if decision.ok:
            await self.update_posts(decision.example, payload.user_id, None)


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(Review(bot))
