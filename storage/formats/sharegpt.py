"""ShareGPT rows: `conversations` (or `messages`) as a list of {from, value} (or {role, content}) turns.

`from` is human/gpt/system (user/assistant also accepted); an optional `system` field gives the system
prompt. Rows with tools (a `tools` field, function_call/observation turns) are skipped unless kept as text.
"""
from __future__ import annotations

from storage.formats.errors import RowError, SkipRow, type_name
from storage.formats.turns import (TOOL_CALL, TOOL_RESULT, TOOL_SKIP_REASON, Turn, check_listed_turns,
                                   fold_tool_turns, has_tools, text_field, with_tool_listing)
from storage.formats.turns import to_conversation as checked
from storage.records import Conversation

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
            "system": "system", "function_call": TOOL_CALL, "tool_call": TOOL_CALL,
            "observation": TOOL_RESULT, "tool": TOOL_RESULT, "function": TOOL_RESULT}


def matches(row: dict) -> bool:
    if isinstance(row.get("conversations"), list):
        return True
    messages = row.get("messages")
    return isinstance(messages, list) and bool(messages) and isinstance(messages[0], dict) and "from" in messages[0]


def to_conversation(row: dict, *, keep_tool_turns: bool = False) -> Conversation:
    if has_tools(row.get("tools")) and not keep_tool_turns:  # an empty list ("[]") offers no tool
        raise SkipRow(TOOL_SKIP_REASON)
    key = "conversations" if "conversations" in row else "messages"
    items = row.get(key)
    if not isinstance(items, list) or not items:
        problem = "is missing" if items is None else ("is empty" if items == [] else f"is {type_name(items)}")
        raise RowError(key, f"{problem}; it should be a list of turns", 'write [{"from": "human", "value": "…"}, '
                       '{"from": "gpt", "value": "…"}]')
    check_listed_turns(items, key)
    turns = []
    system = text_field(row.get("system"), "system", required=False)
    if system:
        turns.append(Turn("system", system, "system"))
    for i, item in enumerate(items):
        field = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise RowError(field, f"is {type_name(item)}, not a turn", 'write each turn as {"from": …, "value": …}')
        speaker_key, text_key = ("from", "value") if "from" in item or "value" in item else ("role", "content")
        speaker = item.get(speaker_key)
        role = SPEAKERS.get(speaker.strip().lower()) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(f"{field}.{speaker_key}", f"is {speaker!r}, which is not a known speaker",
                           "use human, gpt or system (or user/assistant)")
        if role == "system" and system:
            raise RowError(field, "is a system turn but the row also has a system field", "keep only one of them")
        turns.append(Turn(role, text_field(item.get(text_key), f"{field}.{text_key}"), f"{field}.{text_key}"))
    if has_tools(row.get("tools")):
        turns = with_tool_listing(turns, row["tools"])
    return checked(fold_tool_turns(turns, keep_tool_turns=keep_tool_turns))


def from_conversation(conversation: Conversation) -> dict:
    system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
    body = conversation[1:] if system else conversation
    names = {"user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in body], "system": system}
