"""Checking and fingerprinting conversations before they become examples."""
from __future__ import annotations

import hashlib
import json
import unicodedata

from storage.records import Conversation

MAX_MESSAGE_CHARS = 8_000
MAX_TURNS = 64
ROLES = ("system", "user", "assistant")


class InvalidConversation(ValueError):
    """The message says what is wrong and how to fix it; it is shown to the user as is."""


def validate_conversation(messages: object) -> Conversation:
    """Return a clean copy of `messages` or raise InvalidConversation.

    Rules: an optional leading system message, then user/assistant turns alternating,
    starting with user and ending with assistant; no empty text; each message at most
    MAX_MESSAGE_CHARS characters.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidConversation("The conversation is empty: give at least a prompt and a response.")
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
        if not content:
            what = {"user": "prompt", "assistant": "response", "system": "system prompt"}[role]
            raise InvalidConversation(f"The {what} (message {i}) is empty: write some text or leave it out.")
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidConversation(
                f"Message {i} ({role}) is {len(content):,} characters; the limit is {MAX_MESSAGE_CHARS:,}. "
                "Shorten it or split it into several examples."
            )
        clean.append({"role": role, "content": content})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    if any(m["role"] == "system" for m in turns):
        raise InvalidConversation("A system message may only come first.")
    if len(turns) < 2:
        raise InvalidConversation("An example needs a prompt (user) and a response (assistant).")
    if len(turns) > MAX_TURNS:
        raise InvalidConversation(f"An example may have at most {MAX_TURNS} turns; this one has {len(turns)}.")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise InvalidConversation(
                f"Turns must alternate user/assistant starting with user; turn {i + 1} is {msg['role']}."
            )
    if turns[-1]["role"] != "assistant":
        raise InvalidConversation("The last turn must be the assistant's response.")
    return clean


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(messages: Conversation) -> str:
    """Same hash for conversations that differ only in case, spacing or Unicode form."""
    canon = [[m["role"], _normalise(m["content"])] for m in messages]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode()).hexdigest()
