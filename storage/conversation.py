"""Checking and fingerprinting conversations before they become examples."""
from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass

from storage.limits import MAX_MESSAGE_CHARS, MAX_TURNS
from storage.records import Conversation

__all__ = ["MAX_MESSAGE_CHARS", "MAX_TURNS", "ROLES", "InvalidConversation", "ShapeProblem", "content_hash",
           "is_blank", "shape_problem", "surrogate_problem", "validate_conversation"]

ROLES = ("system", "user", "assistant")
# Letters that render as nothing although Unicode files them as letters or symbols (Discord's favourite
# "invisible name" characters); with the format (Cf) and control (Cc) characters they make text look empty.
_BLANK_LOOKALIKES = "\u034f\u115f\u1160\u2800\u3164\uffa0"


class InvalidConversation(ValueError):
    """The message says what is wrong and how to fix it; it is shown to the user as is."""


@dataclass(frozen=True)
class ShapeProblem:
    """What breaks the order of a conversation's turns; each caller words it for its readers.

    kind: "system_not_first" | "not_alternating" | "no_turns" (only a system message) |
    "last_not_assistant"; `index` is the offending message's position in the whole conversation
    (None for "no_turns"); `expected` the role that message should have had."""

    kind: str
    index: int | None = None
    expected: str | None = None


def shape_problem(roles: list[str]) -> ShapeProblem | None:
    """The one rule for the order of turns: an optional leading system message, then user and assistant
    alternating, starting with user and ending with assistant. The first problem in reading order, or None."""
    start = 1 if roles and roles[0] == "system" else 0
    for i, role in enumerate(roles[start:]):
        expected = "user" if i % 2 == 0 else "assistant"
        if role == "system":
            return ShapeProblem("system_not_first", start + i)
        if role != expected:
            return ShapeProblem("not_alternating", start + i, expected)
    if len(roles) == start:
        return ShapeProblem("no_turns")
    if roles[-1] != "assistant":
        return ShapeProblem("last_not_assistant", len(roles) - 1, "assistant")
    return None


def validate_conversation(messages: object) -> Conversation:
    """Return a clean copy of `messages` or raise InvalidConversation.

    Rules: an optional leading system message, then user/assistant turns alternating,
    starting with user and ending with assistant; no empty text; each message at most
    MAX_MESSAGE_CHARS characters.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidConversation("The conversation is empty: give at least a prompt and a response.")
    system_first = isinstance(messages[0], dict) and messages[0].get("role") == "system"
    if len(messages) - system_first > MAX_TURNS:  # before any per-message work: the count alone decides
        raise InvalidConversation(f"An example may have at most {MAX_TURNS} turns; this one has "
                                  f"{len(messages) - system_first}.")
    clean: Conversation = []
    for i, msg in enumerate(messages, 1):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise InvalidConversation(f"Message {i} must have a 'role' and a 'content'.")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise InvalidConversation(f"Message {i} has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise InvalidConversation(f"Message {i} ({role}) must be text, not {type(content).__name__}.")
        content = content.strip()
        what = {"user": "prompt", "assistant": "response", "system": "system prompt"}[role]
        if is_blank(content):
            invisible = " (only invisible characters such as zero-width spaces)" if content else ""
            raise InvalidConversation(f"The {what} (message {i}) is empty{invisible}: write some text or leave it out.")
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidConversation(
                f"Message {i} ({role}) is {len(content):,} characters; the limit is {MAX_MESSAGE_CHARS:,}. "
                "Shorten it or split it into several examples."
            )
        surrogate = surrogate_problem(content)
        if surrogate:
            raise InvalidConversation(f"The {what} (message {i}) {surrogate}.")
        clean.append({"role": role, "content": content})
    problem = shape_problem([m["role"] for m in clean])
    if problem is None:
        return clean
    if problem.kind == "system_not_first":
        raise InvalidConversation("A system message may only come first.")
    if problem.kind == "no_turns" or len(clean) - system_first < 2:
        raise InvalidConversation("An example needs a prompt (user) and a response (assistant).")
    if problem.kind == "not_alternating":
        turn = problem.index + 1 - system_first  # turns are counted after the system message
        raise InvalidConversation(f"Turns must alternate user/assistant starting with user; turn {turn} is "
                                  f"{clean[problem.index]['role']}.")
    raise InvalidConversation("The last turn must be the assistant's response.")


@functools.cache
def _blank_text() -> re.Pattern[str]:
    """Text made only of whitespace and characters that show nothing; built once, when first needed."""
    invisible = "".join(chr(c) for c in range(sys.maxunicode + 1)
                        if unicodedata.category(chr(c)) in ("Cf", "Cc"))
    return re.compile(f"[\\s{re.escape(invisible)}{_BLANK_LOOKALIKES}]*+")


def is_blank(text: str) -> bool:
    """True for text a reader would see as empty: whitespace, zero-width and direction marks (U+200B,
    U+2060, U+FEFF, U+200E, ...), other format and control characters. Linear in the text's length."""
    stripped = text.strip()
    if not stripped:
        return True
    if unicodedata.category(stripped[0]) not in ("Cf", "Cc") and stripped[0] not in _BLANK_LOOKALIKES:
        return False  # the usual case, decided by the first character
    return _blank_text().fullmatch(stripped) is not None


def surrogate_problem(text: str) -> str | None:
    """What is wrong with a lone UTF-16 surrogate (e.g. a JSON "\\ud800" escape), or None: such text cannot
    be stored or shown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start + 1}, which "
                "is not a character; fix the \\u escape in the source (a surrogate needs its pair) or remove it")
    return None


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(messages: Conversation) -> str:
    """Same hash for conversations that differ only in case, spacing or Unicode form."""
    canon = [[m["role"], _normalise(m["content"])] for m in messages]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode()).hexdigest()
