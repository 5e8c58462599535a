"""The stand-in's in-memory Discord: users, guilds, roles, members, channels, messages.

Objects here are plain dataclasses a test can hold and compare; each knows how to render itself
as the JSON payload Discord would send (``payload()``), so the REST routes and the gateway build
their answers from one place.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import discord

DISCORD_EPOCH_MS = 1420070400000

# Permission bits the stand-in checks (Discord's values).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = discord.Permissions.all().value

#: What @everyone may do in a fresh guild (close to Discord's defaults for a community server).
DEFAULT_EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | ADD_REACTIONS | EMBED_LINKS | ATTACH_FILES
    | USE_APPLICATION_COMMANDS
)
#: What the bot's own role gets unless a test says otherwise (an invite with the usual text scopes).
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_COMPONENTS_V2 = 1 << 15

# Channel types.
GUILD_TEXT = 0
DM = 1


def _as_bits(value: int | discord.Permissions | None) -> int:
    if value is None:
        return 0
    if isinstance(value, discord.Permissions):
        return value.value
    return int(value)


def iso(ts: _dt.datetime) -> str:
    return ts.isoformat()


def snowflake_time(snowflake: int) -> _dt.datetime:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


class Snowflakes:
    """Increasing, realistic snowflake ids (timestamp in the high bits, so ``created_at`` works)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._last = 0

    def next(self) -> int:
        now_ms = int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1000) - DISCORD_EPOCH_MS
        candidate = (now_ms << 22) | (next(self._counter) & 0xFFF)
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass(eq=False)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 1
    mentionable: bool = False
    managed: bool = False

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    guild: "FakeGuild"
    user: FakeUser
    roles: list[FakeRole] = field(default_factory=list)
    nick: str | None = None
    joined_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def permissions(self) -> int:
        """Guild-level permissions: @everyone | roles; owner and Administrator get everything."""
        if self.guild.owner_id == self.user.id:
            return ALL_PERMISSIONS
        bits = self.guild.everyone.permissions
        for role in self.roles:
            bits |= role.permissions
        if bits & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return bits

    def payload(self, *, with_user: bool = True, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r.id) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if with_permissions:
            data["permissions"] = str(self.permissions)
        return data


@dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    guild: "FakeGuild | None" = None
    type: int = GUILD_TEXT
    topic: str | None = None
    position: int = 0
    recipients: list[FakeUser] = field(default_factory=list)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "last_message_id": None, "flags": 0}
        if self.guild is not None:
            data.update(
                guild_id=str(self.guild.id),
                name=self.name,
                position=self.position,
                permission_overwrites=[],
                topic=self.topic,
                nsfw=False,
                rate_limit_per_user=0,
                parent_id=None,
            )
        else:
            data["recipients"] = [u.payload() for u in self.recipients]
        return data


@dataclass(eq=False)
class FakeAttachment:
    """A file on a message. ``url`` points at the stand-in, so ``Attachment.read()`` works."""

    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    url: str = ""

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description:
            data["description"] = self.description
        return data


@dataclass(eq=False)
class FakeMessage:
    """A message in the store. It is live: edits by the bot change it in place."""

    id: int
    channel: FakeChannel
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    reference: "FakeMessage | None" = None
    allowed_mentions: dict[str, Any] | None = None
    reactions: dict[str, list[int]] = field(default_factory=dict)  # emoji key -> user ids, in order
    edited_at: _dt.datetime | None = None
    deleted: bool = False
    webhook_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    type: int = 0
    mentions: list[FakeUser] = field(default_factory=list)  # users named as <@id> in the content

    @property
    def guild(self) -> "FakeGuild | None":
        return self.channel.guild

    def refresh_mentions(self, users: dict[int, FakeUser]) -> None:
        ids = [int(x) for x in re.findall(r"<@!?(\d+)>", self.content)]
        self.mentions = [users[i] for i in dict.fromkeys(ids) if i in users]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "Bot is thinking..." placeholder."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def text(self) -> str:
        """What a reader sees: the content, then each embed's title/description/fields."""
        parts = [self.content] if self.content else []
        for embed in self.embeds:
            for key in ("title", "description"):
                if embed.get(key):
                    parts.append(embed[key])
            for f in embed.get("fields", []):
                parts.append(f"{f.get('name', '')}: {f.get('value', '')}")
            if (embed.get("footer") or {}).get("text"):
                parts.append(embed["footer"]["text"])
        return "\n".join(parts)

    def walk_components(self) -> Iterator[dict[str, Any]]:
        """Every component on the message, depth first (rows, containers, sections, accessories)."""
        yield from walk_components(self.components)

    def component(self, custom_id: str) -> dict[str, Any] | None:
        return next((c for c in self.walk_components() if c.get("custom_id") == custom_id), None)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.walk_components() if c.get("type") == 2]

    def reaction_count(self, emoji: str) -> int:
        return len(self.reactions.get(emoji_key(emoji), []))

    def payload(self, *, include_content: bool = True, include_reference: bool = True,
                bot_user_id: int | None = None) -> dict[str, Any]:
        guild = self.guild
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "type": self.type,
            "author": self.author.payload(),
            "content": self.content if include_content else "",
            "timestamp": iso(snowflake_time(self.id)),
            "edited_timestamp": iso(self.edited_at) if self.edited_at else None,
            "tts": False,
            "mention_everyone": "@everyone" in self.content or "@here" in self.content,
            "mentions": [
                {**u.payload(), **({"member": guild.members[u.id].payload(with_user=False)}
                                   if guild is not None and u.id in guild.members else {})}
                for u in self.mentions
            ],
            "mention_roles": re.findall(r"<@&(\d+)>", self.content),
            "attachments": [a.payload() for a in self.attachments] if include_content else [],
            "embeds": list(self.embeds) if include_content else [],
            "components": list(self.components) if include_content else [],
            "pinned": False,
            "flags": self.flags,
            "reactions": [
                {
                    "emoji": emoji_payload(key),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": bot_user_id in users if bot_user_id else False,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for key, users in self.reactions.items()
                if users
            ],
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            member = guild.members.get(self.author.id)
            if member is not None:
                data["member"] = member.payload(with_user=False)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.reference is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(self.reference.id),
                "channel_id": str(self.reference.channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
            if include_reference:
                data["referenced_message"] = self.reference.payload(
                    include_content=include_content, include_reference=False, bot_user_id=bot_user_id
                )
        return data


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]

    def member(self, user: FakeUser | int) -> FakeMember:
        uid = user if isinstance(user, int) else user.id
        return self.members[uid]

    def payload(self, *, include_members: bool, bot_user_id: int) -> dict[str, Any]:
        members = list(self.members.values()) if include_members else [
            m for m in self.members.values() if m.user.id == bot_user_id
        ]
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "safety_alerts_channel_id": None,
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": iso(_dt.datetime.now(_dt.timezone.utc)),
            "channels": [c.payload() for c in self.channels.values()],
            "threads": [],
            "members": [m.payload() for m in members],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for comp in components:
        yield comp
        yield from walk_components(comp.get("components", []))
        for key in ("component", "accessory"):
            if isinstance(comp.get(key), dict):
                yield from walk_components([comp[key]])


_CUSTOM_EMOJI = re.compile(r"<?a?:?(?P<name>\w+):(?P<id>\d+)>?")


def emoji_key(emoji: str | discord.PartialEmoji | discord.Emoji) -> str:
    """One spelling per emoji: the unicode character, or ``name:id`` for a custom emoji."""
    if isinstance(emoji, (discord.PartialEmoji, discord.Emoji)):
        return f"{emoji.name}:{emoji.id}" if emoji.id else str(emoji.name)
    match = _CUSTOM_EMOJI.fullmatch(emoji)
    if match:
        return f"{match['name']}:{match['id']}"
    return emoji


def emoji_payload(key: str) -> dict[str, Any]:
    if ":" in key:
        name, _, eid = key.partition(":")
        return {"id": eid, "name": name, "animated": False}
    return {"id": None, "name": key}
