"""Discord's REST API (``/api/v10/...``) as far as a bot like ours uses it.

Handlers parse the request (JSON or multipart with files), apply it to the world through
``FakeDiscord``'s internal operations, and answer like Discord: JSON with a Content-Type of exactly
``application/json`` (discord.py compares it strictly), Discord's error codes on failure.
"""

from __future__ import annotations

import json
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from . import validation as v
from .world import (
    ADD_REACTIONS,
    ATTACH_FILES,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    FakeChannel,
    FakeMessage,
    emoji_key,
)

if TYPE_CHECKING:
    from .fake import FakeDiscord

API = "/api/v10"


@dataclass
class RequestRecord:
    """One HTTP request the bot made to the stand-in."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int = 0
    json: Any = None

    def __repr__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


@dataclass
class UploadedFile:
    index: int
    filename: str
    data: bytes
    content_type: str | None = None


@dataclass
class Body:
    json: dict[str, Any] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)


def json_response(data: Any, status: int = 200) -> web.Response:
    # Not web.json_response: it adds "; charset=utf-8", and discord.py then reads the body as text.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_body(request: web.Request) -> Body:
    ctype = request.headers.get("Content-Type", "")
    if ctype.startswith("multipart/"):
        body = Body()
        reader = await request.multipart()
        index = 0
        async for part in reader:
            data = await part.read()
            if part.name == "payload_json":
                body.json = json.loads(data.decode())
            elif part.filename is not None:
                name = part.name or ""
                if name.startswith("files[") and name.endswith("]"):
                    file_index = int(name[6:-1])
                else:
                    file_index = index
                body.files.append(UploadedFile(file_index, part.filename, bytes(data),
                                               part.headers.get("Content-Type")))
                index += 1
        return body
    raw = await request.read()
    return Body(json=json.loads(raw) if raw else {})


class RestApi:
    def __init__(self, fake: "FakeDiscord"):
        self.fake = fake

    def install(self, app: web.Application) -> None:
        r = app.router
        add = lambda method, path, handler: r.add_route(method, API + path, handler)  # noqa: E731
        add("GET", "/users/@me", self.get_me)
        add("GET", "/oauth2/applications/@me", self.get_application)
        add("GET", "/applications/@me", self.get_application)
        add("GET", "/gateway", self.get_gateway)
        add("GET", "/gateway/bot", self.get_gateway_bot)
        add("GET", "/users/{user_id:[0-9]+}", self.get_user)
        add("POST", "/users/@me/channels", self.create_dm)
        for scope in ("", "/guilds/{guild_id:[0-9]+}"):
            add("GET", f"/applications/{{app_id:[0-9]+}}{scope}/commands", self.get_commands)
            add("PUT", f"/applications/{{app_id:[0-9]+}}{scope}/commands", self.put_commands)
            add("POST", f"/applications/{{app_id:[0-9]+}}{scope}/commands", self.post_command)
            add("DELETE", f"/applications/{{app_id:[0-9]+}}{scope}/commands/{{command_id:[0-9]+}}", self.delete_command)
        add("GET", "/guilds/{guild_id:[0-9]+}", self.get_guild)
        add("GET", "/guilds/{guild_id:[0-9]+}/roles", self.get_roles)
        add("GET", "/guilds/{guild_id:[0-9]+}/channels", self.get_guild_channels)
        add("GET", "/guilds/{guild_id:[0-9]+}/members", self.list_members)
        add("GET", "/guilds/{guild_id:[0-9]+}/members/{user_id:[0-9]+}", self.get_member)
        add("GET", "/channels/{channel_id:[0-9]+}", self.get_channel)
        add("GET", "/channels/{channel_id:[0-9]+}/messages", self.get_messages)
        add("POST", "/channels/{channel_id:[0-9]+}/messages", self.post_message)
        add("GET", "/channels/{channel_id:[0-9]+}/messages/{message_id:[0-9]+}", self.get_message)
        add("PATCH", "/channels/{channel_id:[0-9]+}/messages/{message_id:[0-9]+}", self.edit_message)
        add("DELETE", "/channels/{channel_id:[0-9]+}/messages/{message_id:[0-9]+}", self.delete_message)
        add("PUT", "/channels/{channel_id:[0-9]+}/messages/{message_id:[0-9]+}/reactions/{emoji}/@me", self.add_reaction)
        add("DELETE", "/channels/{channel_id:[0-9]+}/messages/{message_id:[0-9]+}/reactions/{emoji}/{user_id:[0-9]+|@me}",
            self.remove_reaction)
        add("POST", "/channels/{channel_id:[0-9]+}/typing", self.typing)
        add("POST", "/interactions/{interaction_id:[0-9]+}/{token}/callback", self.interaction_callback)
        add("POST", "/webhooks/{app_id:[0-9]+}/{token}", self.followup)
        add("GET", "/webhooks/{app_id:[0-9]+}/{token}/messages/{message_id:[0-9]+|@original}", self.get_webhook_message)
        add("PATCH", "/webhooks/{app_id:[0-9]+}/{token}/messages/{message_id:[0-9]+|@original}", self.edit_webhook_message)
        add("DELETE", "/webhooks/{app_id:[0-9]+}/{token}/messages/{message_id:[0-9]+|@original}", self.delete_webhook_message)
        r.add_route("GET", "/attachments/{attachment_id:[0-9]+}/{filename}", self.get_attachment)
        r.add_route("GET", "/gateway", self.fake.gateway.handle)
        r.add_route("*", "/{tail:.*}", self.unhandled)

    # --- middleware ------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        fake = self.fake
        if request.path == "/gateway" or request.path.startswith("/attachments/"):
            return await handler(request)
        record = RequestRecord(request.method, request.path, dict(request.query), request.headers.get("Authorization"))
        fake.requests.append(record)
        try:
            needs_auth = not request.path.startswith((f"{API}/webhooks/", f"{API}/interactions/"))
            if needs_auth and (fake.token is None or record.authorization != f"Bot {fake.token}"):
                raise v.DiscordError(401, 0, "401: Unauthorized")
            response = await handler(request)
        except v.DiscordError as exc:
            response = json_response(exc.body(), status=exc.status)
        except web.HTTPException:
            raise
        except Exception:  # a bug in the stand-in: report it at exit. Not a 5xx: discord.py retries those
            fake.server_errors.append(f"{request.method} {request.path}\n{traceback.format_exc()}")
            response = json_response({"message": "stand-in bug, see the test's teardown", "code": 0}, 400)
        record.status = response.status
        await fake._notify()
        return response

    async def unhandled(self, request: web.Request) -> web.Response:
        self.fake.unhandled.append(f"{request.method} {request.path}")
        return json_response({"message": "404: Not Found", "code": 0}, status=404)

    # --- helpers -------------------------------------------------------------------------------
    def _channel(self, request: web.Request) -> FakeChannel:
        channel = self.fake.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise v.unknown("Channel", v.UNKNOWN_CHANNEL)
        if channel.guild is not None and not self.fake._bot_permissions(channel) & VIEW_CHANNEL:
            raise v.DiscordError(403, v.MISSING_ACCESS, "Missing Access")
        return channel

    def _message(self, request: web.Request, channel: FakeChannel) -> FakeMessage:
        message = self.fake.messages.get(int(request.match_info["message_id"]))
        if message is None or message.deleted or message.channel is not channel or message.ephemeral:
            raise v.unknown("Message", v.UNKNOWN_MESSAGE)
        return message

    def _need(self, channel: FakeChannel, bits: int) -> None:
        if channel.guild is not None and (self.fake._bot_permissions(channel) & bits) != bits:
            raise v.DiscordError(403, v.MISSING_PERMISSIONS, "Missing Permissions")

    def _guild(self, request: web.Request):
        guild = self.fake.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise v.unknown("Guild", v.UNKNOWN_GUILD)
        return guild

    def _interaction(self, request: web.Request):
        record = self.fake._by_token.get(request.match_info["token"])
        if record is None or record.response is None:
            raise v.unknown("Webhook", v.UNKNOWN_WEBHOOK)
        return record

    # --- start-up ------------------------------------------------------------------------------
    async def get_me(self, request: web.Request) -> web.Response:
        return json_response({**self.fake.bot_user.payload(), "verified": True, "mfa_enabled": False,
                              "email": None, "locale": "en-US"})

    async def get_application(self, request: web.Request) -> web.Response:
        fake = self.fake
        return json_response({
            "id": str(fake.application_id),
            "name": fake.bot_user.name,
            "description": "guildtune stand-in application",
            "icon": None,
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "terms_of_service_url": None,
            "privacy_policy_url": None,
            "owner": fake.app_owner.payload(),
            "verify_key": "0" * 64,
            "team": None,
            "flags": fake.application_flags,
            "tags": [],
            "interactions_endpoint_url": None,
            "bot": fake.bot_user.payload(),
        })

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    # --- users and guilds ----------------------------------------------------------------------
    async def get_user(self, request: web.Request) -> web.Response:
        user = self.fake.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise v.unknown("User", v.UNKNOWN_USER)
        return json_response(user.payload())

    async def create_dm(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        user = self.fake.users.get(int(body.json.get("recipient_id", 0)))
        if user is None:
            raise v.unknown("User", v.UNKNOWN_USER)
        return json_response(self.fake.dm_channel(user).payload())

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        data = guild.payload(include_members=False, bot_user_id=self.fake.bot_user.id)
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            data.pop(key, None)
        data["approximate_member_count"] = len(guild.members)
        return json_response(data)

    async def get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.payload() for r in self._guild(request).roles.values()])

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([c.payload() for c in self._guild(request).channels.values()])

    async def list_members(self, request: web.Request) -> web.Response:
        if "members" not in self.fake.privileged_intents:
            raise v.DiscordError(403, v.MISSING_ACCESS, "Missing Access")
        guild = self._guild(request)
        limit = int(request.query.get("limit", 1))
        after = int(request.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.user.id > after), key=lambda m: m.user.id)
        return json_response([m.payload() for m in members[:limit]])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise v.unknown("Member", v.UNKNOWN_MEMBER)
        return json_response(member.payload())

    # --- application commands ------------------------------------------------------------------
    def _scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app_id"]) != self.fake.application_id:
            raise v.DiscordError(403, v.MISSING_ACCESS, "Missing Access")
        if "guild_id" in request.match_info:
            return self._guild(request).id
        return None

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.fake.commands.get(self._scope(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        payload = (await read_body(request)).json
        if not isinstance(payload, list):
            raise v.form_error([("_", "BASE_TYPE_ARRAY", "Must be an array.")])
        v.check_commands(payload)
        self.fake.commands[scope] = [self.fake._register_command(c, scope) for c in payload]
        self.fake.syncs.append(scope)
        return json_response(self.fake.commands[scope])

    async def post_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        payload = (await read_body(request)).json
        v.check_commands([payload])
        existing = [c for c in self.fake.commands.get(scope, [])
                    if not (c["name"] == payload["name"] and c["type"] == payload.get("type", 1))]
        cmd = self.fake._register_command(payload, scope)
        self.fake.commands[scope] = existing + [cmd]
        return json_response(cmd, status=201)

    async def delete_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        cid = request.match_info["command_id"]
        before = self.fake.commands.get(scope, [])
        after = [c for c in before if c["id"] != cid]
        if len(after) == len(before):
            raise v.unknown("application command", v.UNKNOWN_COMMAND)
        self.fake.commands[scope] = after
        return no_content()

    # --- channels and messages -----------------------------------------------------------------
    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).payload())

    async def get_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._need(channel, READ_MESSAGE_HISTORY)
        limit = min(int(request.query.get("limit", 50)), 100)
        msgs = [m for m in self.fake.messages.values()
                if m.channel is channel and not m.deleted and not m.ephemeral]
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
            msgs = sorted(msgs, key=lambda m: m.id)[:limit]
        if "around" in request.query:
            around = int(request.query["around"])
            msgs = sorted(msgs, key=lambda m: abs(m.id - around))[:limit]
        msgs = sorted(msgs, key=lambda m: m.id, reverse=True)[:limit]
        return json_response([self.fake._rest_payload(m) for m in msgs])

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._need(channel, READ_MESSAGE_HISTORY)
        return json_response(self.fake._rest_payload(self._message(request, channel)))

    async def post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = await read_body(request)
        self._need(channel, SEND_MESSAGES | (ATTACH_FILES if body.files else 0))
        message = await self.fake._create_message(channel, body, kind="message")
        return json_response(self.fake._rest_payload(message))

    async def edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        body = await read_body(request)
        if message.author is not self.fake.bot_user:
            only_flags = set(body.json) <= {"flags"}
            if not only_flags:
                raise v.DiscordError(403, v.CANNOT_EDIT_OTHERS, "Cannot edit a message authored by another user")
        await self.fake._edit_message(message, body)
        return json_response(self.fake._rest_payload(message))

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        if message.author is not self.fake.bot_user:
            self._need(channel, MANAGE_MESSAGES)
        await self.fake._delete_message(message, by_bot=True)
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        key = emoji_key(urllib.parse.unquote(request.match_info["emoji"]))
        if ":" not in key and key.isascii():
            raise v.DiscordError(400, v.UNKNOWN_EMOJI, "Unknown Emoji")
        self._need(channel, READ_MESSAGE_HISTORY | (0 if message.reactions.get(key) else ADD_REACTIONS))
        await self.fake._add_reaction(message, self.fake.bot_user, key)
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(request, channel)
        key = emoji_key(urllib.parse.unquote(request.match_info["emoji"]))
        who = request.match_info["user_id"]
        user = self.fake.bot_user if who == "@me" else self.fake.users.get(int(who))
        if user is None:
            raise v.unknown("User", v.UNKNOWN_USER)
        if user is not self.fake.bot_user:
            self._need(channel, MANAGE_MESSAGES)
        await self.fake._remove_reaction(message, user, key)
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._need(channel, SEND_MESSAGES)
        self.fake.typing.append(channel)
        return no_content()

    async def get_attachment(self, request: web.Request) -> web.Response:
        attachment = self.fake.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None:
            return web.Response(status=404)
        return web.Response(body=attachment.data,
                            headers={"Content-Type": attachment.content_type or "application/octet-stream"})

    # --- interactions --------------------------------------------------------------------------
    async def interaction_callback(self, request: web.Request) -> web.Response:
        record = self.fake._by_token.get(request.match_info["token"])
        if record is None or str(record.id) != request.match_info["interaction_id"]:
            raise v.unknown("interaction", v.UNKNOWN_INTERACTION)
        body = await read_body(request)
        result = await self.fake._interaction_callback(record, body)
        if request.query.get("with_response") in ("1", "true", "True"):
            return json_response(result)
        return no_content()

    async def followup(self, request: web.Request) -> web.Response:
        record = self._interaction(request)
        body = await read_body(request)
        message = await self.fake._followup(record, body)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(self.fake._rest_payload(message))
        return no_content()

    def _webhook_message(self, request: web.Request) -> tuple[Any, FakeMessage]:
        record = self._interaction(request)
        mid = request.match_info["message_id"]
        if mid == "@original":
            message = record.message
        else:
            candidates = ([record.message] if record.message else []) + record.followups
            message = next((m for m in candidates if str(m.id) == mid), None)
        if message is None or message.deleted:
            raise v.unknown("Message", v.UNKNOWN_MESSAGE)
        return record, message

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        return json_response(self.fake._rest_payload(message))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        record, message = self._webhook_message(request)
        body = await read_body(request)
        await self.fake._edit_message(message, body, interaction=record)
        return json_response(self.fake._rest_payload(message))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        _, message = self._webhook_message(request)
        await self.fake._delete_message(message, by_bot=True)
        return no_content()
