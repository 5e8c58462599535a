"""What the bot did, as tests read it: ``SentMessage`` (one entry of ``fake.sent``),
``InteractionResponse`` (the initial callback) and ``InteractionRecord`` (one interaction's life).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .world import FakeAttachment, FakeChannel, FakeGuild, FakeMessage, FakeUser, FLAG_EPHEMERAL

if TYPE_CHECKING:
    from .fake import FakeDiscord


class StandinTimeout(AssertionError):
    """The bot did not do what a test waited for in time. The message says what did happen."""


_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


@dataclass(frozen=True)
class Pings:
    """Who would be notified by a message, given its content and ``allowed_mentions``."""

    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False

    def __bool__(self) -> bool:
        return bool(self.users or self.roles or self.everyone)


def compute_pings(content: str, allowed_mentions: dict[str, Any] | None, *,
                  replied_to: FakeUser | None, ephemeral: bool) -> Pings:
    """Discord's rule: with no ``allowed_mentions`` every mention pings (and a reply pings its author)."""
    if ephemeral:
        return Pings()
    am = allowed_mentions
    parse = set(am.get("parse", [])) if am is not None else {"users", "roles", "everyone"}
    users_mentioned = {int(x) for x in _USER_MENTION.findall(content or "")}
    roles_mentioned = {int(x) for x in _ROLE_MENTION.findall(content or "")}
    if "users" in parse:
        users = set(users_mentioned)
    else:
        users = users_mentioned & {int(x) for x in (am or {}).get("users", [])}
    if "roles" in parse:
        roles = set(roles_mentioned)
    else:
        roles = roles_mentioned & {int(x) for x in (am or {}).get("roles", [])}
    everyone = "everyone" in parse and ("@everyone" in (content or "") or "@here" in (content or ""))
    if replied_to is not None and (am is None or am.get("replied_user", False)):
        users.add(replied_to.id)
    return Pings(frozenset(users), frozenset(roles), everyone)


@dataclass
class SentMessage:
    """One thing the bot sent, in the order it happened.

    ``kind``: ``"message"`` (channel message, incl. DMs), ``"response"`` (interaction reply, type 4),
    ``"followup"``, or ``"edit"`` (any edit: channel message, ``@original``, followup, or a type 7
    component update). The fields are a snapshot of the message *after* this step; ``message`` is the
    live store object.
    """

    kind: str
    message: FakeMessage
    channel: FakeChannel
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    allowed_mentions: dict[str, Any] | None
    flags: int
    pings: Pings
    interaction: "InteractionRecord | None" = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def text(self) -> str:
        """Content plus embed text, as a reader sees it at this step."""
        snapshot = FakeMessage(id=0, channel=self.channel, author=self.message.author, content=self.content,
                               embeds=self.embeds)
        return snapshot.text

    def __repr__(self) -> str:
        eph = " ephemeral" if self.ephemeral else ""
        return f"<Sent {self.kind}{eph} #{self.channel.name} {self.text[:80]!r}>"


@dataclass
class InteractionResponse:
    """The bot's initial callback (``POST /interactions/{id}/{token}/callback``)."""

    type: int  # 4 reply, 5 deferred reply, 6 deferred update, 7 update, 8 autocomplete, 9 modal
    data: dict[str, Any]
    attachments: list[FakeAttachment] = field(default_factory=list)

    @property
    def content(self) -> str:
        return self.data.get("content") or ""

    @property
    def flags(self) -> int:
        return int(self.data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.data.get("embeds") or []

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.data.get("components") or []

    @property
    def allowed_mentions(self) -> dict[str, Any] | None:
        return self.data.get("allowed_mentions")

    @property
    def is_modal(self) -> bool:
        return self.type == 9

    @property
    def choices(self) -> list[dict[str, Any]]:
        return self.data.get("choices") or []


TYPE_NAMES = {2: "application command", 3: "component", 4: "autocomplete", 5: "modal submit"}


class InteractionRecord:
    """One interaction the test started, and everything the bot did with it.

    - ``response``: the initial callback (``None`` if the bot never answered).
    - ``message``: the message the interaction's ``@original`` points at: the reply (type 4/5) or,
      for a component interaction answered with type 6/7, the message the component is on.
    - ``followups``: messages sent with ``interaction.followup.send``.
    - ``log``: every ``SentMessage`` produced for this interaction, in order.
    """

    def __init__(self, fake: "FakeDiscord", *, id: int, token: str, type: int, name: str, user: FakeUser,
                 guild: FakeGuild | None, channel: FakeChannel, payload: dict[str, Any],
                 source_message: FakeMessage | None = None, parent: "InteractionRecord | None" = None):
        self._fake = fake
        self.id = id
        self.token = token
        self.type = type
        self.name = name
        self.user = user
        self.guild = guild
        self.channel = channel
        self.payload = payload
        self.source_message = source_message
        self.parent = parent
        self.created_at = fake._loop_time()
        self.response: InteractionResponse | None = None
        self.message: FakeMessage | None = None
        self.followups: list[FakeMessage] = []
        self.log: list[SentMessage] = []
        self._cursor = {"edit": 0, "followup": 0}

    def __repr__(self) -> str:
        rtype = self.response.type if self.response else None
        return f"<InteractionRecord {TYPE_NAMES.get(self.type)} {self.name!r} response={rtype}>"

    # --- reading -------------------------------------------------------------------------------
    def _require_response(self) -> InteractionResponse:
        if self.response is None:
            raise StandinTimeout(
                f"the bot never answered {self.name!r} (Discord would show 'The application did not respond'); "
                f"requests it made: {self._fake._recent_requests()}"
            )
        return self.response

    @property
    def ephemeral(self) -> bool:
        return self._require_response().ephemeral

    @property
    def deferred(self) -> bool:
        return self._require_response().type in (5, 6)

    @property
    def modal(self) -> dict[str, Any]:
        """The modal the bot opened (``title``, ``custom_id``, ``components``); raises if it did not."""
        response = self._require_response()
        if response.type != 9:
            raise AssertionError(f"{self.name!r} was answered with type {response.type}, not a modal")
        return response.data

    @property
    def choices(self) -> list[dict[str, Any]]:
        """Autocomplete choices (``[{name, value}]``)."""
        return self._require_response().choices

    @property
    def text(self) -> str:
        """The visible text of the response message now (after any edits)."""
        self._require_response()
        if self.message is None:
            raise AssertionError(f"{self.name!r} has no visible response message (response type "
                                 f"{self.response.type})")
        return self.message.text

    @property
    def edits(self) -> list[SentMessage]:
        return [s for s in self.log if s.kind == "edit"]

    @property
    def sent(self) -> list[SentMessage]:
        """Everything visible this interaction produced, in order."""
        return list(self.log)

    @property
    def all_text(self) -> str:
        """The current text of the response message and every followup, joined by newlines."""
        msgs = ([self.message] if self.message is not None and self.message.author.bot else []) + self.followups
        return "\n".join(m.text for m in msgs if not m.deleted)

    # --- waiting -------------------------------------------------------------------------------
    async def wait_response(self, timeout: float = 5.0) -> InteractionResponse:
        await self._fake._wait_until(lambda: self.response is not None, timeout,
                                     f"an initial response to {self.name!r}")
        return self.response  # type: ignore[return-value]

    async def next_edit(self, timeout: float = 5.0) -> SentMessage:
        """The next edit of this interaction's messages not yet returned by this method."""
        return await self._next("edit", timeout)

    async def next_followup(self, timeout: float = 5.0) -> SentMessage:
        """The next followup not yet returned by this method (a followup that filled a deferred
        "thinking" placeholder counts: Discord turns it into the original response)."""
        return await self._next("followup", timeout)

    async def _next(self, kind: str, timeout: float) -> SentMessage:
        def entries() -> list[SentMessage]:
            return [s for s in self.log if s.kind == kind]

        index = self._cursor[kind]
        await self._fake._wait_until(lambda: len(entries()) > index, timeout,
                                     f"a {kind} for {self.name!r} (have {len(entries())}, consumed {index})",
                                     history=lambda: self.log)
        self._cursor[kind] = index + 1
        return entries()[index]

    async def settle(self, timeout: float = 5.0) -> "InteractionRecord":
        """Wait until the bot has finished all handling (command, view and modal callbacks)."""
        await self._fake.settle(timeout)
        return self

    async def final_text(self, timeout: float = 5.0) -> str:
        """Settle, then the visible text of the response message."""
        await self.settle(timeout)
        return self.text
