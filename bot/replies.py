"""What the bot says about storage's results and refusals, and what it reads out of Discord's syntax.

Storage returns data and raises typed errors; the mentions (`<@id>`), the command hints ("/review",
"/model history") and the parsing of role and channel mentions live here, beside the commands.
"""
from __future__ import annotations

from typing import Any

from storage.examples import Decision, UnknownExample
from storage.guild_settings import SettingError, parse_setting
from storage.versions import VersionRemoved

#: Settings that name Discord objects: the mention prefix a moderator may type, and the hint on a mistake.
MENTION_SETTINGS = {"moderator_role_ids": ("<@&", "role mentions or ids separated by spaces"),
                    "review_channel_id": ("<#", "a channel mention or id, or 'off'")}


def decision_text(decision: Decision) -> str:
    """A moderator's decision in words: done, decided before (by whom), or a duplicate edit."""
    example = decision.example
    if decision.ok:
        return f"Example #{example.id} {example.status}."
    if decision.duplicate_of is not None:
        return f"The edited text duplicates example #{decision.duplicate_of}; reject this one instead."
    by = f" by <@{decision.decided_by}>" if decision.decided_by else ""
    return f"Example #{example.id} was already {example.status}{by}."


def refusal_text(exc: Exception) -> str:
    """A storage refusal for a member: its message, and the command that shows what to choose instead."""
    if isinstance(exc, UnknownExample):
        return f"{exc} Check the id with /review."
    if isinstance(exc, VersionRemoved):
        return f"{str(exc).removesuffix('.')}; choose a newer one from /model history."
    return str(exc)


def setting_value(name: str, raw: str) -> Any:
    """`parse_setting` for what a moderator typed in Discord: role and channel mentions become ids."""
    if name not in MENTION_SETTINGS:
        return parse_setting(name, raw)
    prefix, hint = MENTION_SETTINGS[name]
    words = [word.removeprefix(prefix).removesuffix(">") for word in raw.replace(",", " ").split()]
    try:
        return parse_setting(name, " ".join(words))
    except SettingError:
        raise SettingError.invalid(name, raw.strip(), hint) from None
