"""OpenAI chat rows, one per JSONL line: {"messages": [{"role": …, "content": …}, …]} (what TRL reads).

Content may also be a list of text parts. Tool use (a `tools` field, `tool`/`function` messages, assistant
`tool_calls`/`function_call`) makes the row skipped unless tool turns are kept as text.
"""
from __future__ import annotations

import json

from storage.formats.errors import RowError, SkipRow, type_name
from storage.formats.turns import (TOOL_CALL, TOOL_RESULT, TOOL_SKIP_REASON, Turn, check_listed_turns,
                                   fold_tool_turns, has_tools, text_field, with_tool_listing)
from storage.formats.turns import to_conversation as checked
from storage.records import Conversation

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": TOOL_RESULT, "function": TOOL_RESULT}


def matches(row: dict) -> bool:
    messages = row.get("messages")
    return isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict) and "role" in messages[0]


def _content(value: object, field: str) -> str:
    if isinstance(value, list):  # [{"type": "text", "text": "…"}, …]
        texts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise RowError(f"{field}[{i}]", "is not a text part (images and audio can't be trained on here)",
                               "remove that part, or write the content as plain text")
            texts.append(text_field(part.get("text"), f"{field}[{i}].text"))
        return "\n".join(texts)
    return text_field(value, field)


def to_conversation(row: dict, *, keep_tool_turns: bool = False) -> Conversation:
    if has_tools(row.get("tools")) and not keep_tool_turns:  # an empty list ("[]") offers no tool
        raise SkipRow(TOOL_SKIP_REASON)
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        problem = "is missing" if messages is None else ("is empty" if messages == [] else f"is {type_name(messages)}")
        raise RowError("messages", f"{problem}; it should be a list of messages",
                       'write [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]')
    check_listed_turns(messages, "messages")
    turns = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RowError(field, f"is {type_name(message)}, not a message", 'write {"role": …, "content": …}')
        role = ROLES.get(message.get("role")) if isinstance(message.get("role"), str) else None
        if role is None:
            raise RowError(f"{field}.role", f"is {message.get('role')!r}", "use system, user or assistant")
        call_key = next((k for k in ("tool_calls", "function_call") if message.get(k)), None)
        if role == "assistant" and call_key:
            if message.get("content"):
                turns.append(Turn("assistant", _content(message["content"], f"{field}.content"), f"{field}.content"))
            calls = json.dumps(message[call_key], ensure_ascii=False)
            turns.append(Turn(TOOL_CALL, calls, f"{field}.{call_key}"))
            continue
        turns.append(Turn(role, _content(message.get("content"), f"{field}.content"), f"{field}.content"))
    if has_tools(row.get("tools")):
        turns = with_tool_listing(turns, row["tools"])
    return checked(fold_tool_turns(turns, keep_tool_turns=keep_tool_turns))


def from_conversation(conversation: Conversation) -> dict:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in conversation]}
