"""A stand-in Discord on loopback: drive a real discord.py bot through its own dispatch.

Why: app commands, views, modals and raw reaction events only behave truly when discord.py parses
real gateway frames and talks to a REST API. This package serves both (aiohttp on 127.0.0.1, an
ephemeral port) from an in-memory world, and records everything the bot sends.

Quick start::

    from tests.discord_standin import FakeDiscord

    async def test_ask(make_bot):
        async with FakeDiscord() as fake:               # starts the server, patches discord.py's two
            guild = fake.add_guild("Guild")              # switches (Route.BASE, DEFAULT_GATEWAY),
            chan = fake.add_channel(guild, "general")    # restores them on exit
            alice = fake.add_member(guild, "alice")
            mod = fake.add_member(guild, "mod", permissions=discord.Permissions(manage_guild=True))
            await fake.start_bot(make_bot(), token="t0k3n")   # READY, GUILD_CREATE, tree.sync() done

            rec = await fake.slash(guild, chan, alice, "ask", {"question": "hi?"})
            assert rec.response.type == 5                      # deferred ("thinking")
            assert "hello" in await rec.final_text()           # waits for the bot to finish
            assert not fake.sent[-1].pings                     # mentions were disabled

Build the world (guilds, channels, members) before ``start_bot`` (it arrives in GUILD_CREATE);
what is added later reaches the bot (GUILD_CREATE, CHANNEL_CREATE, GUILD_ROLE_CREATE,
GUILD_MEMBER_ADD) just before the next event or ``settle()``. Create bots with
``chunk_guilds_at_startup=False``.

Building the world (all synchronous, return dataclasses from ``world.py``)
    ``add_user(name, bot=False)`` → FakeUser; ``add_guild(name, owner=None, everyone_permissions=...,
    bot_permissions=...)`` → FakeGuild (has @everyone, an owner, the bot's managed role);
    ``add_role(guild, name, permissions)``; ``add_channel(guild, name)`` → FakeChannel;
    ``add_member(guild, user_or_name, permissions=None, roles=(), nick=None)`` → FakeMember
    (``permissions`` makes a role holding them: Discord has no per-member permissions);
    ``dm_channel(user)``; ``attachment(filename, data, content_type=None)`` → FakeAttachment
    (usable as an attachment option, or in ``post_message(attachments=[...])``; its URL is served).
    Permission bits: ``world.MANAGE_GUILD`` etc., or pass ``discord.Permissions``.

Bot lifecycle
    ``await start_bot(bot, token)`` – raises what ``bot.start`` raised (e.g.
    ``discord.PrivilegedIntentsRequired`` when the world was made with
    ``FakeDiscord(message_content_intent=False)`` and the bot asks for it: gateway close 4014).
    ``await stop_bot()`` (also done on exit). ``await settle()`` waits until the bot has read every
    event and finished its handlers. ``fake.bot_errors``: discord.py's ERROR log lines (tracebacks
    of failing commands), also quoted in every timeout message.

Users acting (each returns after the bot handled it unless ``wait=False``)
    ``await post_message(channel, author, content, reference=msg, attachments=[...])`` → FakeMessage;
    ``edit_user_message(msg, content)``; ``delete_user_message(msg)``;
    ``await react(msg, user, "👍")`` / ``unreact`` (MESSAGE_REACTION_ADD/REMOVE, raw events).
    Without the message-content intent (not allowed, or not requested by the bot), others' message
    content/embeds/attachments arrive empty, as on Discord (mentions of the bot excepted).

Interactions (each returns an ``InteractionRecord`` once the bot answered, or finished without
answering, or ``timeout`` passed)
    ``await slash(guild, channel, user, "name" | "group sub", {option: value})`` – options are
    checked against the synced command (or the bot's tree if it never syncs): unknown/missing
    required options, choices and min/max raise ``ValueError`` as the Discord client would refuse.
    ``await autocomplete(guild, channel, user, "name", options, focused="opt")`` → ``rec.choices``.
    ``await click(message | record | sent, custom_id, user=None)``; ``await select(..., values)``.
    ``await submit_modal(record_with_modal, {custom_id: text}, user=None)``.
    ``await message_context_menu("Teach as answer", message, user)``;
    ``await user_context_menu(name, target, guild, channel, user)``.

InteractionRecord (``records.py``)
    ``response`` (``InteractionResponse``: ``type`` 4/5/6/7/8/9, ``content``, ``flags``,
    ``ephemeral``, ``embeds``, ``components``, ``attachments``, ``allowed_mentions``, ``data``);
    ``message`` (what ``@original`` points at: the reply, or the clicked message for 6/7, live);
    ``followups``; ``log`` (its ``SentMessage``s); ``text`` (visible text now); ``modal``;
    ``choices``; ``await next_edit()``, ``await next_followup()`` (each returns the next one not yet
    returned), ``await wait_response()``, ``await settle()``, ``await final_text()``.

What the bot sent
    ``fake.sent``: every message the bot posted or edited, in order, as ``SentMessage`` (``kind`` in
    message/response/followup/edit, ``channel``, ``content``, ``embeds``, ``components``,
    ``attachments`` (FakeAttachment: ``filename``, ``data``), ``allowed_mentions``, ``ephemeral``,
    ``pings`` – who would actually be notified, ``text``). ``await fake.next_sent(channel=...)``.
    ``fake.deleted``, ``fake.typing``, ``fake.requests`` (method, path, Authorization, status),
    ``fake.authorization_headers``, ``fake.commands`` (synced payloads by guild id / None),
    ``fake.command(name, guild=...)``.

Discord's rules it enforces (so a bot that breaks them fails here too)
    content > 2000 chars, embed and component limits → 400 code 50035 (Invalid Form Body); empty
    message → 50006; a second answer to an interaction → 400 code 40060; answering after
    ``interaction_deadline`` (3 s) → 404 10062; unknown message → 404 10008; a followup before the
    initial response → 404 10015; bot lacking Send Messages/Attach Files/Manage Messages → 403 50013;
    the first followup after a "thinking" defer fills the placeholder and keeps the defer's
    ephemerality; ephemeral messages can't be fetched and only their user can click them;
    ``default_member_permissions`` is enforced only with ``FakeDiscord(enforce_default_permissions=True)``
    (guild admins can override it on Discord, so handlers must check permissions themselves).
    Routes the stand-in does not serve answer 404 and, with ``strict=True`` (default), fail the test
    on exit with the list, so a missing route is never mistaken for a bot bug.
    Not modelled: channel permission overwrites, threads, rate limits, stickers, polls.
"""

from .fake import FakeDiscord
from .records import InteractionRecord, InteractionResponse, Pings, SentMessage, StandinTimeout
from .rest import RequestRecord
from .validation import DiscordError
from .world import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
)

__all__ = [
    "ADMINISTRATOR",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "DiscordError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "InteractionRecord",
    "InteractionResponse",
    "Pings",
    "RequestRecord",
    "SentMessage",
    "StandinTimeout",
]
