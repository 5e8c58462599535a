"""``FakeDiscord``: the stand-in server, its world, and the test-facing API (see the package docstring)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import secrets
from typing import Any, Callable, Iterable, Sequence

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from . import validation as v
from .gateway import (
    DIRECT_MESSAGE_REACTIONS,
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILDS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    MESSAGE_CONTENT,
    Gateway,
    GatewaySession,
)
from .records import InteractionRecord, InteractionResponse, SentMessage, StandinTimeout, compute_pings
from .rest import Body, RequestRecord, RestApi
from .world import (
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    USE_APPLICATION_COMMANDS,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Snowflakes,
    _as_bits,
    emoji_key,
    emoji_payload,
    walk_components,
)

_BOT_TASK_PREFIXES = ("discord.py: ", "CommandTree-invoker", "discord-ui-view-dispatch",
                      "discord-ui-modal-dispatch", "discord-ui-dynamic-item")

# Application flags Discord reports for an unverified bot whose privileged intents are switched on.
_APP_FLAG_FOR_INTENT = {"presences": 1 << 13, "members": 1 << 15, "message_content": 1 << 19}

# Option types of application commands.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)

UserLike = FakeUser | FakeMember


def _user_of(user: UserLike) -> FakeUser:
    return user.user if isinstance(user, FakeMember) else user


class _ErrorLog(logging.Handler):
    """Collects discord.py's ERROR log lines (e.g. "Ignoring exception in command") for failure messages."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class FakeDiscord:
    def __init__(
        self,
        *,
        message_content_intent: bool = True,
        members_intent: bool = True,
        presences_intent: bool = False,
        interaction_deadline: float = 3.0,
        enforce_default_permissions: bool = False,
        strict: bool = True,
        bot_name: str = "guildtune",
    ):
        self.ids = Snowflakes()
        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.bot_user = self.add_user(bot_name, bot=True)
        self.app_owner = self.add_user("app-owner")
        self.application_id = self.bot_user.id
        self.privileged_intents = {name for name, on in (("message_content", message_content_intent),
                                                         ("members", members_intent),
                                                         ("presences", presences_intent)) if on}
        self.application_flags = sum(_APP_FLAG_FOR_INTENT[name] for name in self.privileged_intents)
        self.interaction_deadline = interaction_deadline
        self.enforce_default_permissions = enforce_default_permissions
        self.strict = strict

        self.token: str | None = None
        self.sent: list[SentMessage] = []
        self.deleted: list[FakeMessage] = []
        self.typing: list[FakeChannel] = []
        self.requests: list[RequestRecord] = []
        self.unhandled: list[str] = []
        self.server_errors: list[str] = []
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.syncs: list[int | None] = []
        self.interactions: list[InteractionRecord] = []
        self._by_token: dict[str, InteractionRecord] = {}
        self._sent_cursor = 0
        self._dm_channels: dict[int, FakeChannel] = {}
        self._tree_schemas: dict[tuple[int | None, str, int], dict[str, Any]] = {}
        # World changes made (synchronously) while a bot is connected; sent before the next event.
        self._pending_events: list[tuple[str, dict[str, Any], int]] = []

        self.gateway = Gateway(self)
        self.rest = RestApi(self)
        self.base_url = ""
        self.gateway_url = ""
        self.bot: discord.Client | None = None
        self._bot_task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._cond: asyncio.Condition | None = None
        self._saved_switches: tuple[str, yarl.URL] | None = None
        self._errors = _ErrorLog()

    # ============================================================================ server lifecycle
    async def __aenter__(self) -> "FakeDiscord":
        self._cond = asyncio.Condition()
        app = web.Application(middlewares=[self.rest.middleware], client_max_size=64 * 1024 * 1024)
        self.rest.install(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self.gateway_url = f"ws://{host}:{port}/gateway"
        self._saved_switches = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = f"{self.base_url}/api/v10"
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        logging.getLogger("discord").addHandler(self._errors)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if self.bot is not None:
                await self.stop_bot()
            await self.gateway.close_all()
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            if self._saved_switches is not None:
                discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved_switches
            logging.getLogger("discord").removeHandler(self._errors)
        if exc_type is None and self.strict and (self.unhandled or self.server_errors):
            raise AssertionError(
                "the bot used routes the stand-in does not serve (add them to tests/discord_standin/rest.py):\n"
                + "\n".join(self.unhandled + self.server_errors)
            )

    # ============================================================================ building the world
    def add_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> FakeUser:
        user = FakeUser(id=self.ids.next(), name=name, bot=bot, global_name=global_name)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: UserLike | None = None,
        everyone_permissions: int | discord.Permissions = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int | discord.Permissions = DEFAULT_BOT_PERMISSIONS,
    ) -> FakeGuild:
        """A guild with @everyone, an owner, the bot as a member (with a managed role holding
        ``bot_permissions``). Build the world before ``start_bot``: GUILD_CREATE carries it."""
        gid = self.ids.next()
        owner_user = _user_of(owner) if owner is not None else self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = FakeGuild(id=gid, name=name, owner_id=owner_user.id)
        guild.roles[gid] = FakeRole(id=gid, guild_id=gid, name="@everyone", position=0,
                                    permissions=_as_bits(everyone_permissions))
        self.guilds[gid] = guild
        guild.members[owner_user.id] = FakeMember(guild=guild, user=owner_user)
        bot_role = FakeRole(id=self.ids.next(), guild_id=gid, name=self.bot_user.name, managed=True,
                            permissions=_as_bits(bot_permissions), position=1)
        guild.roles[bot_role.id] = bot_role
        guild.members[self.bot_user.id] = FakeMember(guild=guild, user=self.bot_user, roles=[bot_role])
        self._queue("GUILD_CREATE", lambda: guild.payload(include_members=False, bot_user_id=self.bot_user.id),
                    GUILDS)
        return guild

    def add_role(self, guild: FakeGuild, name: str, permissions: int | discord.Permissions = 0, *,
                 mentionable: bool = False) -> FakeRole:
        role = FakeRole(id=self.ids.next(), guild_id=guild.id, name=name, permissions=_as_bits(permissions),
                        position=len(guild.roles), mentionable=mentionable)
        guild.roles[role.id] = role
        self._queue("GUILD_ROLE_CREATE", lambda: {"guild_id": str(guild.id), "role": role.payload()}, GUILDS)
        return role

    def add_channel(self, guild: FakeGuild, name: str = "general", *, topic: str | None = None) -> FakeChannel:
        channel = FakeChannel(id=self.ids.next(), name=name, guild=guild, topic=topic, position=len(guild.channels))
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self._queue("CHANNEL_CREATE", channel.payload, GUILDS)
        return channel

    def add_member(
        self,
        guild: FakeGuild,
        user: UserLike | str,
        *,
        permissions: int | discord.Permissions | None = None,
        roles: Iterable[FakeRole] = (),
        nick: str | None = None,
    ) -> FakeMember:
        """Add a member. ``user`` may be a name (a user is created). Discord has no per-member
        permissions, so ``permissions`` creates a role holding them; both
        ``member.guild_permissions`` and ``interaction.permissions`` then agree."""
        fake_user = self.add_user(user) if isinstance(user, str) else _user_of(user)
        member_roles = list(roles)
        if permissions is not None:
            member_roles.append(self.add_role(guild, f"perms-{fake_user.name}", permissions))
        member = FakeMember(guild=guild, user=fake_user, roles=member_roles, nick=nick)
        guild.members[fake_user.id] = member
        self._queue("GUILD_MEMBER_ADD", lambda: {**member.payload(), "guild_id": str(guild.id)}, GUILD_MEMBERS)
        return member

    def dm_channel(self, user: UserLike) -> FakeChannel:
        """The DM channel between the bot and ``user`` (created on first use, as Discord does)."""
        u = _user_of(user)
        channel = self._dm_channels.get(u.id)
        if channel is None:
            channel = FakeChannel(id=self.ids.next(), name=f"dm-{u.name}", type=DM, recipients=[u])
            self._dm_channels[u.id] = channel
            self.channels[channel.id] = channel
        return channel

    def attachment(self, filename: str, data: bytes | str, *, content_type: str | None = None,
                   description: str | None = None) -> FakeAttachment:
        """A file a user uploads (for an attachment option or ``post_message(attachments=...)``)."""
        raw = data.encode() if isinstance(data, str) else data
        att = FakeAttachment(id=self.ids.next(), filename=filename, data=raw, content_type=content_type,
                             description=description)
        att.url = f"{self.base_url}/attachments/{att.id}/{filename}"
        self.attachments[att.id] = att
        return att

    # ============================================================================ bot lifecycle
    async def start_bot(self, bot: discord.Client, token: str = "standin-token", *, timeout: float = 10.0,
                        fast_ready: bool = True) -> None:
        """Run ``bot.start(token)`` against the stand-in; return once READY and the guilds have been
        delivered and the bot's ``setup_hook``/``on_ready`` work (e.g. ``tree.sync()``) is done.

        ``fast_ready`` shortens discord.py's wait for further GUILD_CREATEs (2 s by default) to 50 ms.
        Raises whatever ``bot.start`` raised (``LoginFailure``, ``PrivilegedIntentsRequired``, ...)."""
        if self._runner is None:
            raise RuntimeError("use 'async with FakeDiscord() as fake:' before start_bot")
        self.token = token
        self.bot = bot
        if fast_ready:
            bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, 0.05)
        self._bot_task = asyncio.create_task(bot.start(token), name="standin: bot.start")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not bot.is_ready():
            if self._bot_task.done():
                exc = self._bot_task.exception()
                await self.stop_bot()
                raise exc if exc is not None else RuntimeError("bot.start() returned before READY")
            if loop.time() > deadline:
                await self.stop_bot()
                raise StandinTimeout(f"the bot was not READY within {timeout}s; requests: {self._recent_requests()}"
                                     f"; errors: {self.bot_errors}")
            await asyncio.sleep(0.01)
        await self.settle(max(deadline - loop.time(), 0.5))

    async def stop_bot(self) -> None:
        """Close the bot (``bot.close()``) and wait for its ``start`` task to end."""
        bot, task = self.bot, self._bot_task
        self.bot, self._bot_task = None, None
        if bot is not None:
            await bot.close()
        if task is not None:
            try:
                await asyncio.wait_for(task, 5.0)
            except BaseException:  # noqa: BLE001 - its outcome was already reported by start_bot
                pass
        await self.gateway.close_all()

    @property
    def bot_errors(self) -> list[str]:
        """discord.py ERROR log lines so far (exceptions in commands, views, events)."""
        return list(self._errors.lines)

    @property
    def close_codes(self) -> list[int]:
        """Gateway close codes the stand-in sent (4004 bad token, 4014 disallowed intents)."""
        return list(self.gateway.close_codes)

    @property
    def authorization_headers(self) -> set[str | None]:
        return {r.authorization for r in self.requests}

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the bot has read every gateway frame sent so far and finished the work they
        started (event listeners, commands, view and modal callbacks). A handler blocked on
        ``view.wait()`` keeps it from settling: wait on the interaction record instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._flush_world_changes()
        try:
            await self.gateway.sync(timeout)
        except asyncio.TimeoutError:
            raise StandinTimeout(f"the bot did not read its gateway frames within {timeout}s") from None
        me = asyncio.current_task()
        quiet_rounds = 0
        while quiet_rounds < 2:
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                       and t.get_name().startswith(_BOT_TASK_PREFIXES)]
            if not pending:
                quiet_rounds += 1
                await asyncio.sleep(0)
                continue
            quiet_rounds = 0
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StandinTimeout(f"the bot was still busy after {timeout}s: {[t.get_name() for t in pending]}")
            await asyncio.wait(pending, timeout=remaining)

    # ============================================================================ users acting
    async def post_message(
        self,
        channel: FakeChannel,
        author: UserLike,
        content: str = "",
        *,
        reference: FakeMessage | None = None,
        attachments: Sequence[FakeAttachment | tuple[str, bytes | str]] = (),
        embeds: list[dict[str, Any]] | None = None,
        wait: bool = True,
    ) -> FakeMessage:
        """A user posts a message (MESSAGE_CREATE). ``wait``: return after the bot handled it."""
        atts = [a if isinstance(a, FakeAttachment) else self.attachment(a[0], a[1]) for a in attachments]
        message = FakeMessage(id=self.ids.next(), channel=channel, author=_user_of(author), content=content,
                              attachments=atts, embeds=list(embeds or []), reference=reference,
                              type=19 if reference is not None else 0)
        message.refresh_mentions(self.users)
        self.messages[message.id] = message
        await self._flush_world_changes()
        await self._dispatch_message("MESSAGE_CREATE", message)
        if wait:
            await self.settle()
        return message

    async def edit_user_message(self, message: FakeMessage, content: str, *, wait: bool = True) -> FakeMessage:
        """A user edits their message (MESSAGE_UPDATE)."""
        message.content = content
        message.refresh_mentions(self.users)
        message.edited_at = _dt.datetime.now(_dt.timezone.utc)
        await self._dispatch_message("MESSAGE_UPDATE", message)
        if wait:
            await self.settle()
        return message

    async def delete_user_message(self, message: FakeMessage, *, wait: bool = True) -> None:
        """A user (or a moderator) deletes a message (MESSAGE_DELETE)."""
        await self._delete_message(message, by_bot=False)
        if wait:
            await self.settle()

    async def react(self, message: FakeMessage, user: UserLike, emoji: str, *, wait: bool = True) -> None:
        """``user`` adds a reaction (MESSAGE_REACTION_ADD, raw events)."""
        await self._flush_world_changes()
        await self._add_reaction(message, _user_of(user), emoji_key(emoji))
        if wait:
            await self.settle()

    async def unreact(self, message: FakeMessage, user: UserLike, emoji: str, *, wait: bool = True) -> None:
        await self._remove_reaction(message, _user_of(user), emoji_key(emoji))
        if wait:
            await self.settle()

    # ============================================================================ interactions
    async def slash(self, guild: FakeGuild | None, channel: FakeChannel, user: UserLike, name: str,
                    options: dict[str, Any] | None = None, *, timeout: float = 5.0) -> InteractionRecord:
        """Invoke ``/name`` (``"group sub"`` for grouped commands) with ``options`` as a user would.

        Option values: str/int/float/bool, ``FakeUser``/``FakeMember``, ``FakeChannel``, ``FakeRole``,
        ``FakeAttachment`` (from ``fake.attachment``). Types, required options, choices and min/max are
        checked against the registered command (what the Discord client enforces). Returns once the
        bot answered (or finished without answering, or ``timeout``)."""
        parts = name.split()
        schema = self._command_schema(parts[0], 1, guild)
        data, resolved = self._command_options(schema, parts, options or {}, guild)
        data.update(id=schema["id"], name=parts[0], type=1)
        if resolved:
            data["resolved"] = resolved
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        self._check_can_use(schema, guild, user)
        return await self._start_interaction(2, guild, channel, user, data, name=f"/{name}", timeout=timeout)

    async def autocomplete(self, guild: FakeGuild | None, channel: FakeChannel, user: UserLike, name: str,
                           options: dict[str, Any], focused: str, *, timeout: float = 5.0) -> InteractionRecord:
        """The user is typing ``options[focused]``; ``record.choices`` holds what the bot suggested."""
        parts = name.split()
        schema = self._command_schema(parts[0], 1, guild)
        data, resolved = self._command_options(schema, parts, options, guild, focused=focused)
        data.update(id=schema["id"], name=parts[0], type=1)
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._start_interaction(4, guild, channel, user, data, name=f"/{name} (autocomplete)",
                                             timeout=timeout)

    async def message_context_menu(self, name: str, message: FakeMessage, user: UserLike, *,
                                   timeout: float = 5.0) -> InteractionRecord:
        """Right-click ``message`` → Apps → ``name``."""
        guild = message.guild
        schema = self._command_schema(name, 3, guild)
        self._check_can_use(schema, guild, user)
        data = {"id": schema["id"], "name": name, "type": 3, "target_id": str(message.id),
                "resolved": {"messages": {str(message.id): message.payload(bot_user_id=self.bot_user.id)}}}
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._start_interaction(2, guild, message.channel, user, data, name=name, timeout=timeout)

    async def user_context_menu(self, name: str, target: UserLike, guild: FakeGuild, channel: FakeChannel,
                                user: UserLike, *, timeout: float = 5.0) -> InteractionRecord:
        schema = self._command_schema(name, 2, guild)
        self._check_can_use(schema, guild, user)
        tu = _user_of(target)
        resolved: dict[str, Any] = {"users": {str(tu.id): tu.payload()}}
        if tu.id in guild.members:
            resolved["members"] = {str(tu.id): guild.members[tu.id].payload(with_user=False, with_permissions=True)}
        data = {"id": schema["id"], "name": name, "type": 2, "target_id": str(tu.id), "resolved": resolved}
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        return await self._start_interaction(2, guild, channel, user, data, name=name, timeout=timeout)

    async def click(self, target: "FakeMessage | InteractionRecord | SentMessage", custom_id: str,
                    user: UserLike | None = None, *, timeout: float = 5.0) -> InteractionRecord:
        """Press the button ``custom_id`` on a message (or on an interaction's response/followups).
        ``user`` defaults to the user of the interaction that produced the message."""
        message, user = self._component_target(target, custom_id, user)
        comp = message.component(custom_id)
        assert comp is not None
        if comp.get("type") != 2:
            raise ValueError(f"{custom_id!r} is a component of type {comp.get('type')}, not a button: use select()")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._start_interaction(3, message.guild, message.channel, user, data, message=message,
                                             name=f"button {custom_id}", timeout=timeout)

    async def select(self, target: "FakeMessage | InteractionRecord | SentMessage", custom_id: str,
                     values: Sequence[str], user: UserLike | None = None, *, timeout: float = 5.0) -> InteractionRecord:
        """Pick ``values`` in the select menu ``custom_id`` (string selects: option values)."""
        message, user = self._component_target(target, custom_id, user)
        comp = message.component(custom_id)
        assert comp is not None
        if comp.get("type") == 3:
            allowed = {o["value"] for o in comp.get("options", [])}
            unknown = [x for x in values if x not in allowed]
            if unknown:
                raise ValueError(f"select {custom_id!r} has no option(s) {unknown}; it offers {sorted(allowed)}")
        lo, hi = comp.get("min_values", 1), comp.get("max_values", 1)
        if not lo <= len(values) <= hi:
            raise ValueError(f"select {custom_id!r} takes between {lo} and {hi} values, got {len(values)}")
        data = {"custom_id": custom_id, "component_type": comp["type"], "values": [str(x) for x in values]}
        return await self._start_interaction(3, message.guild, message.channel, user, data, message=message,
                                             name=f"select {custom_id}", timeout=timeout)

    async def submit_modal(self, record: InteractionRecord, values: dict[str, str], user: UserLike | None = None,
                           *, timeout: float = 5.0) -> InteractionRecord:
        """Fill in and submit the modal ``record`` opened. ``values`` maps text input custom_ids to
        text (a list of strings for a select). Refuses what the Discord client would refuse: unknown
        fields, a required field left empty, text outside min_length/max_length."""
        modal = record.modal
        remaining = dict(values)
        components = [self._modal_answer(c, remaining) for c in modal.get("components", [])]
        if remaining:
            fields = [c.get("custom_id") for c in walk_components(modal.get("components", [])) if c.get("custom_id")]
            raise ValueError(f"modal {modal.get('custom_id')!r} has no field(s) {sorted(remaining)}; it has {fields}")
        data = {"custom_id": modal["custom_id"], "components": components}
        who = _user_of(user) if user is not None else record.user
        return await self._start_interaction(5, record.guild, record.channel, who, data,
                                             message=record.source_message, name=f"modal {modal['custom_id']}",
                                             timeout=timeout, parent=record)

    # ============================================================================ reading the log
    def sent_in(self, channel: FakeChannel) -> list[SentMessage]:
        return [s for s in self.sent if s.channel is channel]

    async def next_sent(self, timeout: float = 5.0, *, channel: FakeChannel | None = None) -> SentMessage:
        """The next entry of ``fake.sent`` (optionally in ``channel``) not yet returned by this method."""
        def pending() -> list[int]:
            return [i for i in range(self._sent_cursor, len(self.sent))
                    if channel is None or self.sent[i].channel is channel]

        await self._wait_until(lambda: bool(pending()), timeout, "the bot to send something"
                               + (f" in #{channel.name}" if channel else ""))
        index = pending()[0]
        self._sent_cursor = index + 1
        return self.sent[index]

    def command(self, name: str, *, guild: FakeGuild | None = None, type: int = 1) -> dict[str, Any]:
        """The registered command payload (as the bot synced it), e.g. to check default_member_permissions."""
        for scope in ((guild.id, None) if guild else (None,)):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == type:
                    return cmd
        raise LookupError(f"no command {name!r} (type {type}) registered; registered: {self._command_names()}")

    # ============================================================================ internals
    def _queue(self, event: str, payload: Callable[[], dict[str, Any]], intent: int) -> None:
        if self.gateway.live:
            self._pending_events.append((event, payload(), intent))

    async def _flush_world_changes(self) -> None:
        events, self._pending_events = self._pending_events, []
        for event, data, intent in events:
            await self.gateway.dispatch(event, data, intent=intent)

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _expected_token(self) -> str | None:
        return self.token

    def _recent_requests(self, n: int = 12) -> list[RequestRecord]:
        return self.requests[-n:]

    def _command_names(self) -> list[str]:
        return sorted({c["name"] for cmds in self.commands.values() for c in cmds})

    async def _notify(self) -> None:
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str,
                          history: Callable[[], list] | None = None) -> None:
        assert self._cond is not None
        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
        except asyncio.TimeoutError:
            seen = history() if history else self.sent[-6:]
            raise StandinTimeout(
                f"waited {timeout}s for {what}; meanwhile the bot sent {seen}; last requests "
                f"{self._recent_requests()}; bot errors: {self.bot_errors[-3:]}"
            ) from None

    def _bot_permissions(self, channel: FakeChannel) -> int:
        if channel.guild is None:
            return ALL_PERMISSIONS
        return channel.guild.members[self.bot_user.id].permissions

    def _content_visible(self, message: FakeMessage, intents: int | None) -> bool:
        """Discord blanks content/embeds/attachments/components of others' guild messages for an app
        without the message-content intent, unless the app is mentioned."""
        if message.author is self.bot_user or message.guild is None:
            return True
        if self.bot_user.mention in message.content or f"<@!{self.bot_user.id}>" in message.content:
            return True
        if intents is None:  # REST: the application's approved intent decides
            return "message_content" in self.privileged_intents
        return bool(intents & MESSAGE_CONTENT)

    def _rest_payload(self, message: FakeMessage) -> dict[str, Any]:
        return message.payload(include_content=self._content_visible(message, None), bot_user_id=self.bot_user.id)

    async def _dispatch_message(self, event: str, message: FakeMessage) -> None:
        intent = GUILD_MESSAGES if message.guild else DIRECT_MESSAGES

        def shape(session: GatewaySession, _: Any) -> dict[str, Any]:
            return message.payload(include_content=self._content_visible(message, session.intents),
                                   bot_user_id=self.bot_user.id)

        await self.gateway.dispatch(event, {}, intent=intent, shape=shape)

    def _attachments_from(self, body: Body) -> list[FakeAttachment]:
        meta = {str(a.get("id")): a for a in body.json.get("attachments") or [] if isinstance(a, dict)}
        out = []
        for f in body.files:
            extra = meta.get(str(f.index), {})
            att = self.attachment(extra.get("filename") or f.filename, f.data, content_type=f.content_type,
                                  description=extra.get("description"))
            out.append(att)
        return out

    def _log(self, kind: str, message: FakeMessage, interaction: InteractionRecord | None,
             allowed_mentions: dict[str, Any] | None) -> SentMessage:
        entry = SentMessage(
            kind=kind, message=message, channel=message.channel, content=message.content,
            embeds=list(message.embeds), components=list(message.components),
            attachments=list(message.attachments), allowed_mentions=allowed_mentions, flags=message.flags,
            pings=compute_pings(message.content, allowed_mentions,
                                replied_to=message.reference.author if message.reference else None,
                                ephemeral=message.ephemeral),
            interaction=interaction,
        )
        self.sent.append(entry)
        if interaction is not None:
            interaction.log.append(entry)
        return entry

    def _resolve_reference(self, channel: FakeChannel, ref: dict[str, Any] | None) -> FakeMessage | None:
        if not ref or not ref.get("message_id"):
            return None
        target = self.messages.get(int(ref["message_id"]))
        if target is None or target.deleted or target.ephemeral:
            if ref.get("fail_if_not_exists", True):
                raise v.form_error([("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")])
            return None
        return target

    async def _create_message(self, channel: FakeChannel, body: Body, *, kind: str,
                              interaction: InteractionRecord | None = None, flags: int | None = None,
                              message_type: int = 0, prefix: str = "") -> FakeMessage:
        data = body.json
        v.check_message_body(data, prefix=prefix, n_files=len(body.files))
        reference = self._resolve_reference(channel, data.get("message_reference"))
        message = FakeMessage(
            id=self.ids.next(), channel=channel, author=self.bot_user, content=data.get("content") or "",
            embeds=list(data.get("embeds") or []), components=list(data.get("components") or []),
            attachments=self._attachments_from(body),
            flags=int(data.get("flags") or 0) if flags is None else flags,
            reference=reference, allowed_mentions=data.get("allowed_mentions"),
            type=19 if reference is not None else message_type,
        )
        if interaction is not None:
            message.webhook_id = self.application_id
            message.interaction_metadata = self._interaction_metadata(interaction)
        message.refresh_mentions(self.users)
        self.messages[message.id] = message
        self._log(kind, message, interaction, data.get("allowed_mentions"))
        if not message.ephemeral:
            await self._dispatch_message("MESSAGE_CREATE", message)
        return message

    async def _edit_message(self, message: FakeMessage, body: Body, *,
                            interaction: InteractionRecord | None = None, kind: str = "edit") -> FakeMessage:
        data = body.json
        keep = message.attachments
        if "attachments" in data and data["attachments"] is not None:
            kept_ids = {str(a.get("id")) for a in data["attachments"] if isinstance(a, dict)}
            keep = [a for a in message.attachments if str(a.id) in kept_ids]
        new_files = self._attachments_from(body)
        merged = {
            "content": data["content"] if "content" in data else message.content,
            "embeds": data["embeds"] if "embeds" in data else message.embeds,
            "components": data["components"] if "components" in data else message.components,
            "flags": message.flags,
        }
        for key in ("content", "embeds", "components"):
            if merged[key] is None:
                merged[key] = "" if key == "content" else []
        v.check_message_body(merged, n_files=len(keep) + len(new_files), require_something=not message.loading)
        message.content = merged["content"]
        message.refresh_mentions(self.users)
        message.embeds = list(merged["embeds"])
        message.components = list(merged["components"])
        message.attachments = keep + new_files
        if "flags" in data and data["flags"] is not None:  # only SUPPRESS_EMBEDS may change on edit
            message.flags = (message.flags & ~FLAG_SUPPRESS_EMBEDS) | (int(data["flags"]) & FLAG_SUPPRESS_EMBEDS)
        message.flags &= ~FLAG_LOADING
        if "allowed_mentions" in data:
            message.allowed_mentions = data["allowed_mentions"]
        message.edited_at = _dt.datetime.now(_dt.timezone.utc)
        self._log(kind, message, interaction, message.allowed_mentions)
        if not message.ephemeral:
            await self._dispatch_message("MESSAGE_UPDATE", message)
        return message

    async def _delete_message(self, message: FakeMessage, *, by_bot: bool) -> None:
        if message.deleted:
            raise v.unknown("Message", v.UNKNOWN_MESSAGE)
        message.deleted = True
        if by_bot:
            self.deleted.append(message)
        if not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel.id)}
            if message.guild:
                data["guild_id"] = str(message.guild.id)
            await self.gateway.dispatch("MESSAGE_DELETE", data,
                                        intent=GUILD_MESSAGES if message.guild else DIRECT_MESSAGES)

    def _reaction_event(self, message: FakeMessage, user: FakeUser, key: str, add: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user_id": str(user.id), "channel_id": str(message.channel.id), "message_id": str(message.id),
            "emoji": emoji_payload(key), "burst": False, "type": 0,
        }
        if message.guild:
            data["guild_id"] = str(message.guild.id)
            member = message.guild.members.get(user.id)
            if add and member is not None:
                data["member"] = member.payload()
        if add:
            data["message_author_id"] = str(message.author.id)
            data["burst_colors"] = []
        return data

    async def _add_reaction(self, message: FakeMessage, user: FakeUser, key: str) -> None:
        users = message.reactions.setdefault(key, [])
        if user.id in users:
            return
        users.append(user.id)
        await self.gateway.dispatch("MESSAGE_REACTION_ADD", self._reaction_event(message, user, key, True),
                                    intent=GUILD_MESSAGE_REACTIONS if message.guild else DIRECT_MESSAGE_REACTIONS)

    async def _remove_reaction(self, message: FakeMessage, user: FakeUser, key: str) -> None:
        users = message.reactions.get(key, [])
        if user.id not in users:
            return
        users.remove(user.id)
        await self.gateway.dispatch("MESSAGE_REACTION_REMOVE", self._reaction_event(message, user, key, False),
                                    intent=GUILD_MESSAGE_REACTIONS if message.guild else DIRECT_MESSAGE_REACTIONS)

    # --- application commands -------------------------------------------------------------------
    def _register_command(self, payload: dict[str, Any], scope: int | None) -> dict[str, Any]:
        previous = next((c for c in self.commands.get(scope, [])
                         if c["name"] == payload["name"] and c.get("type", 1) == payload.get("type", 1)), None)
        cmd = {
            "type": 1, "description": "", "options": [], "default_member_permissions": None,
            "nsfw": False, "contexts": None, "integration_types": [0], **payload,
            "id": previous["id"] if previous else str(self.ids.next()),
            "application_id": str(self.application_id),
            "version": str(self.ids.next()),
        }
        if cmd["default_member_permissions"] is not None:  # Discord answers with a string
            cmd["default_member_permissions"] = str(cmd["default_member_permissions"])
        if scope is not None:
            cmd["guild_id"] = str(scope)
        return cmd

    def _command_schema(self, name: str, type: int, guild: FakeGuild | None) -> dict[str, Any]:
        """The registered command; if the bot never synced, the schema its tree would sync."""
        try:
            return self.command(name, guild=guild, type=type)
        except LookupError:
            if self.syncs:
                raise LookupError(f"the bot registered no {('', 'slash command', 'user command', 'message command')[type]}"
                                  f" {name!r} here; registered: {self._command_names()}") from None
        tree = getattr(self.bot, "tree", None)
        if tree is None:
            raise LookupError(f"no command {name!r}: the bot has no app command tree")
        ctype = discord.AppCommandType(type)
        for g in ((discord.Object(guild.id), None) if guild else (None,)):
            cmd = tree.get_command(name, guild=g, type=ctype)
            if cmd is not None:
                payload = cmd.to_dict(tree)
                payload.setdefault("type", type)
                key = (g.id if g else None, name, type)
                if key not in self._tree_schemas:
                    self._tree_schemas[key] = self._register_command(payload, key[0])
                return self._tree_schemas[key]
        raise LookupError(f"the bot's tree has no {ctype.name} command {name!r}")

    def _check_can_use(self, schema: dict[str, Any], guild: FakeGuild | None, user: UserLike) -> None:
        if guild is None:
            return
        u = _user_of(user)
        member = guild.members.get(u.id)
        if member is None:
            raise ValueError(f"{u.name} is not a member of {guild.name}: fake.add_member(guild, user) first")
        perms = member.permissions
        if not perms & USE_APPLICATION_COMMANDS:
            raise PermissionError(f"{u.name} lacks Use Application Commands in {guild.name}")
        required = schema.get("default_member_permissions")
        if self.enforce_default_permissions and required is not None and (perms & int(required)) != int(required):
            raise PermissionError(f"Discord hides {schema['name']!r} from {u.name}: default_member_permissions "
                                  f"{required} not held")

    def _command_options(self, schema: dict[str, Any], parts: list[str], values: dict[str, Any],
                         guild: FakeGuild | None, focused: str | None = None) -> tuple[dict[str, Any], dict]:
        resolved: dict[str, dict[str, Any]] = {}
        level = schema.get("options") or []
        path: list[dict[str, Any]] = []
        for sub in parts[1:]:
            opt = next((o for o in level if o["name"] == sub and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None)
            if opt is None:
                subs = [o["name"] for o in level if o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)]
                raise LookupError(f"/{' '.join(parts)}: no subcommand {sub!r}; available: {subs}")
            path.append(opt)
            level = opt.get("options") or []
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in level):
            subs = [o["name"] for o in level]
            raise LookupError(f"/{' '.join(parts)} is a group: name a subcommand, one of {subs}")
        leaf = [self._option_value(o, values, guild, resolved, focused, parts) for o in level if o["name"] in values]
        unknown = set(values) - {o["name"] for o in level}
        if unknown:
            raise ValueError(f"/{' '.join(parts)} has no option(s) {sorted(unknown)}; it has {[o['name'] for o in level]}")
        missing = [o["name"] for o in level if o.get("required") and o["name"] not in values]
        if missing and focused is None:
            raise ValueError(f"/{' '.join(parts)} needs option(s) {missing} (Discord will not send it without them)")
        options: list[dict[str, Any]] = leaf
        for opt in reversed(path):
            options = [{"name": opt["name"], "type": opt["type"], "options": options}]
        return {"options": options}, resolved

    def _option_value(self, opt: dict[str, Any], values: dict[str, Any], guild: FakeGuild | None,
                      resolved: dict[str, dict[str, Any]], focused: str | None, parts: list[str]) -> dict[str, Any]:
        name, kind, raw = opt["name"], opt["type"], values[opt["name"]]
        where = f"/{' '.join(parts)} {name}"
        out: dict[str, Any] = {"name": name, "type": kind}
        if focused == name:
            out.update(value=str(raw), focused=True)
            return out
        if kind in (STRING, INTEGER, NUMBER):
            try:
                value: Any = {STRING: str, INTEGER: int, NUMBER: float}[kind](raw)
            except (TypeError, ValueError):
                type_name = {STRING: "string", INTEGER: "integer", NUMBER: "number"}[kind]
                raise ValueError(f"{where}: {raw!r} is not a valid {type_name}") from None
            if kind == INTEGER and isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"{where}: {raw!r} is not an integer")
            choices = opt.get("choices")
            if choices and value not in [c["value"] for c in choices]:
                raise ValueError(f"{where}: {raw!r} is not one of the choices {[c['value'] for c in choices]}")
            if kind == STRING:
                lo, hi = opt.get("min_length", 0), opt.get("max_length", 6000)
                if not lo <= len(value) <= hi:
                    raise ValueError(f"{where}: length {len(value)} outside {lo}..{hi}")
            else:
                if "min_value" in opt and value < opt["min_value"] or "max_value" in opt and value > opt["max_value"]:
                    raise ValueError(f"{where}: {value} outside {opt.get('min_value')}..{opt.get('max_value')}")
            out["value"] = value
        elif kind == BOOLEAN:
            out["value"] = bool(raw)
        elif kind in (USER, MENTIONABLE) and isinstance(raw, (FakeUser, FakeMember)):
            u = _user_of(raw)
            out["value"] = str(u.id)
            resolved.setdefault("users", {})[str(u.id)] = u.payload()
            if guild is not None and u.id in guild.members:
                resolved.setdefault("members", {})[str(u.id)] = guild.members[u.id].payload(
                    with_user=False, with_permissions=True)
        elif kind in (ROLE, MENTIONABLE) and isinstance(raw, FakeRole):
            out["value"] = str(raw.id)
            resolved.setdefault("roles", {})[str(raw.id)] = raw.payload()
        elif kind == CHANNEL and isinstance(raw, FakeChannel):
            out["value"] = str(raw.id)
            allowed = opt.get("channel_types")
            if allowed and raw.type not in allowed:
                raise ValueError(f"{where}: channel type {raw.type} not in {allowed}")
            resolved.setdefault("channels", {})[str(raw.id)] = {
                **raw.payload(), "permissions": str(ALL_PERMISSIONS)}
        elif kind == ATTACHMENT and isinstance(raw, FakeAttachment):
            out["value"] = str(raw.id)
            resolved.setdefault("attachments", {})[str(raw.id)] = raw.payload()
        else:
            raise ValueError(f"{where}: {raw!r} does not fit option type {kind} (users: FakeUser/FakeMember, "
                             "channels: FakeChannel, roles: FakeRole, files: fake.attachment(...))")
        return out

    # --- interaction plumbing ------------------------------------------------------------------
    def _component_target(self, target: Any, custom_id: str, user: UserLike | None) -> tuple[FakeMessage, FakeUser]:
        candidates: list[FakeMessage]
        default_user: FakeUser | None = None
        if isinstance(target, InteractionRecord):
            candidates = ([target.message] if target.message else []) + target.followups
            default_user = target.user
        elif isinstance(target, SentMessage):
            candidates = [target.message]
            default_user = target.interaction.user if target.interaction else None
        else:
            candidates = [target]
        message = next((m for m in reversed(candidates) if m.component(custom_id) is not None), None)
        if message is None:
            have = [c.get("custom_id") for m in candidates for c in m.walk_components() if c.get("custom_id")]
            raise LookupError(f"no component {custom_id!r} on the message(s); components there: {have}")
        if message.deleted:
            raise LookupError(f"message {message.id} with {custom_id!r} was deleted")
        comp = message.component(custom_id)
        if comp and comp.get("disabled"):
            raise PermissionError(f"component {custom_id!r} is disabled: a user cannot use it")
        who = _user_of(user) if user is not None else default_user
        if who is None:
            raise ValueError("say which user clicks: click(message, custom_id, user)")
        if message.ephemeral and message.interaction_metadata:
            owner = int(message.interaction_metadata["user"]["id"])
            if owner != who.id:
                raise PermissionError("an ephemeral message is only visible to the user who invoked it")
        return message, who

    def _modal_answer(self, comp: dict[str, Any], remaining: dict[str, Any]) -> dict[str, Any]:
        kind = comp.get("type")
        if kind == 1:
            return {"type": 1, "id": comp.get("id"), "components": [self._modal_answer(c, remaining)
                                                                   for c in comp.get("components", [])]}
        if kind == 18:
            return {"type": 18, "id": comp.get("id"), "component": self._modal_answer(comp["component"], remaining)}
        cid = comp.get("custom_id")
        if cid is None:
            return {"type": kind, "id": comp.get("id")}
        if kind == 4:
            value = str(remaining.pop(cid, comp.get("value") or ""))
            if comp.get("required", True) and not value:
                raise ValueError(f"modal field {cid!r} is required: Discord will not submit it empty")
            lo, hi = comp.get("min_length", 0), comp.get("max_length", 4000)
            if value and not lo <= len(value) <= hi:
                raise ValueError(f"modal field {cid!r}: length {len(value)} outside {lo}..{hi}")
            return {"type": 4, "id": comp.get("id"), "custom_id": cid, "value": value}
        chosen = remaining.pop(cid, [])
        chosen = [chosen] if isinstance(chosen, str) else list(chosen)
        if comp.get("required", True) and not chosen and comp.get("min_values", 1) > 0:
            raise ValueError(f"modal field {cid!r} is required")
        return {"type": kind, "id": comp.get("id"), "custom_id": cid, "values": [str(x) for x in chosen]}

    def _interaction_metadata(self, record: InteractionRecord) -> dict[str, Any]:
        return {"id": str(record.id), "type": record.type, "user": record.user.payload(),
                "authorizing_integration_owners": {"0": str(record.guild.id)} if record.guild else
                {"1": str(record.user.id)}}

    async def _start_interaction(self, itype: int, guild: FakeGuild | None, channel: FakeChannel, user: UserLike,
                                 data: dict[str, Any], *, name: str, timeout: float,
                                 message: FakeMessage | None = None,
                                 parent: InteractionRecord | None = None) -> InteractionRecord:
        if not self.gateway.live:
            raise RuntimeError("no bot is connected: await fake.start_bot(bot) first")
        u = _user_of(user)
        iid = self.ids.next()
        token = "interaction." + secrets.token_urlsafe(32)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": itype, "data": data,
            "token": token, "version": 1, "locale": "en-US", "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "app_permissions": str(self._bot_permissions(channel)),
            "channel_id": str(channel.id),
            "channel": channel.payload(),
        }
        if guild is not None:
            member = guild.members.get(u.id)
            if member is None:
                raise ValueError(f"{u.name} is not a member of {guild.name}: fake.add_member(guild, user) first")
            payload.update(guild_id=str(guild.id), guild_locale="en-US", context=0,
                           guild={"id": str(guild.id), "locale": "en-US", "features": []},
                           member=member.payload(with_permissions=True),
                           authorizing_integration_owners={"0": str(guild.id)})
            payload["channel"]["permissions"] = str(member.permissions)
        else:
            payload.update(user=u.payload(), context=1, authorizing_integration_owners={"1": str(u.id)})
        if message is not None:
            payload["message"] = message.payload(bot_user_id=self.bot_user.id)
        record = InteractionRecord(self, id=iid, token=token, type=itype, name=name, user=u, guild=guild,
                                   channel=channel, payload=payload, source_message=message, parent=parent)
        self.interactions.append(record)
        self._by_token[token] = record
        await self._flush_world_changes()
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        answered = asyncio.create_task(self._wait_quietly(lambda: record.response is not None, timeout))
        settled = asyncio.create_task(self.settle(timeout))
        done, pending = await asyncio.wait({answered, settled}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, *done, return_exceptions=True)
        return record

    async def _wait_quietly(self, predicate: Callable[[], bool], timeout: float) -> None:
        assert self._cond is not None
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), timeout)

    _ALLOWED_CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}

    async def _interaction_callback(self, record: InteractionRecord, body: Body) -> dict[str, Any]:
        if record.response is not None:
            raise v.DiscordError(400, v.ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        if self._loop_time() - record.created_at > self.interaction_deadline:
            raise v.unknown("interaction", v.UNKNOWN_INTERACTION)
        rtype = int(body.json.get("type", 0))
        data = body.json.get("data") or {}
        allowed = set(self._ALLOWED_CALLBACKS[record.type])
        if record.type == 5 and record.source_message is None:
            allowed -= {6, 7}
        if rtype not in allowed:
            raise v.form_error([("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                                 f"Interaction response type {rtype} is not valid for this interaction")])
        message: FakeMessage | None = None
        files_body = Body(json=data, files=body.files)
        mtype = {2: 20, 3: 0, 5: 0}.get(record.type, 0)
        if record.type == 2 and record.payload["data"].get("type", 1) != 1:
            mtype = 23
        if rtype == 4:
            message = await self._create_message(record.channel, files_body, kind="response", interaction=record,
                                                 message_type=mtype, prefix="data")
        elif rtype == 5:
            message = FakeMessage(id=self.ids.next(), channel=record.channel, author=self.bot_user,
                                  flags=FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL),
                                  webhook_id=self.application_id,
                                  interaction_metadata=self._interaction_metadata(record), type=mtype)
            self.messages[message.id] = message
        elif rtype in (6, 7):
            message = record.source_message
            assert message is not None
            if rtype == 7:
                v.check_message_body(data, prefix="data", n_files=len(body.files), require_something=False)
                await self._edit_message(message, files_body, interaction=record)
        elif rtype == 8:
            v.check_autocomplete_choices(data.get("choices") or [])
        elif rtype == 9:
            v.check_modal(data)
        record.message = message
        record.response = InteractionResponse(type=rtype, data=data,
                                              attachments=list(message.attachments) if rtype == 4 and message else [])
        result: dict[str, Any] = {"interaction": {
            "id": str(record.id), "type": record.type, "activity_instance_id": None,
            "response_message_id": str(message.id) if message else None,
            "response_message_loading": rtype == 5,
            "response_message_ephemeral": bool(message and message.ephemeral),
        }}
        if message is not None and rtype in (4, 5, 7):
            result["resource"] = {"type": rtype, "message": message.payload(bot_user_id=self.bot_user.id)}
        return result

    async def _followup(self, record: InteractionRecord, body: Body) -> FakeMessage:
        original = record.message
        if record.response is not None and record.response.type == 5 and original is not None and original.loading:
            # Discord: the first followup after a "thinking" defer resolves the placeholder; its
            # ephemeral flag is the defer's, whatever the followup asked for.
            v.check_message_body(body.json, n_files=len(body.files))
            await self._edit_message(original, body, interaction=record, kind="followup")
            return original
        flags = int(body.json.get("flags") or 0) & (FLAG_EPHEMERAL | FLAG_SUPPRESS_EMBEDS | (1 << 12) | (1 << 15))
        message = await self._create_message(record.channel, body, kind="followup", interaction=record, flags=flags)
        record.followups.append(message)
        return message
