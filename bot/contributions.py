"""A member's contribution becoming an example: one path for /teach, "Teach as answer", the 📚
reaction and corrections, so validation messages, duplicates, the moderator auto-approve rule and
the review-channel hand-off behave the same everywhere.

New pending examples are announced with `bot.dispatch("example_pending", example, channel_id)`; the
review cog listens (`on_example_pending(example, source_channel_id=None)`) and posts them in the
review channel when one is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import discord

from bot.checks import is_moderator
from storage.conversation import InvalidConversation
from storage.records import Conversation, Example

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot


@dataclass(frozen=True)
class Contribution:
    """The outcome, with the sentence to show the contributor."""

    example: Example | None
    created: bool
    message: str


def describe_status(example: Example) -> str:
    return {
        "pending": "pending: a moderator will review it",
        "approved": "approved: it will be in the next training run",
        "rejected": "rejected by a moderator",
        "deleted": "deleted",
    }.get(example.status, example.status)


async def initial_status(bot: "GuildtuneBot", guild_id: int, user: discord.abc.User) -> str:
    """Moderators' own examples skip the queue when the guild says so; everyone else's wait."""
    settings = await bot.db.settings.get(guild_id)
    if settings.auto_approve_moderators and await is_moderator(bot.db, guild_id, user):
        return "approved"
    return "pending"


async def contribute(
    bot: "GuildtuneBot", guild_id: int, user: discord.abc.User, messages: Conversation, *, source: str,
    source_message_ids: Iterable[int] = (), answer_id: int | None = None, status: str | None = None,
    channel_id: int | None = None,
) -> Contribution:
    """Validate and store; never raises for bad input (the message says what to fix).
    `channel_id`: where the source messages are (the review post links to them)."""
    if status is None:
        status = await initial_status(bot, guild_id, user)
    try:
        result = await bot.db.examples.add(
            guild_id, messages, source=source, author_id=user.id,
            source_message_ids=list(source_message_ids), status=status, answer_id=answer_id,
            source_channel_id=channel_id)
    except InvalidConversation as exc:
        return Contribution(None, False, f"Not saved: {exc}")
    example = result.example
    if not result.created:
        return Contribution(example, False,
                            f"Not saved again: this duplicates example #{example.id} "
                            f"({describe_status(example)}).")
    if example.status == "pending":
        bot.dispatch("example_pending", example, channel_id)
    return Contribution(example, True, f"Saved as example #{example.id} ({describe_status(example)}).")
