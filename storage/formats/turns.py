"""Turning a format's list of turns into a checked conversation.

Each format reads its rows into `Turn`s that remember which field they came from, so a structural
problem (two user turns in a row, an empty answer) is reported with the field the user must edit.
Tool turns are folded here too, the same way for every format that has them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from storage.conversation import ROLES, ShapeProblem, is_blank, shape_problem
from storage.formats.errors import KEEP_TOOL_TURNS_HINT, RowError, SkipRow, type_name
from storage.limits import MAX_LISTED_TURNS, MAX_TURNS
from storage.records import Conversation

TOOL_CALL, TOOL_RESULT = "tool_call", "tool_result"
TOOL_SKIP_REASON = (
    "a tool-calling row (it has a tools field, or function_call/observation/tool turns); "
    f"import with {KEEP_TOOL_TURNS_HINT} to keep them as plain text"
)


@dataclass
class Turn:
    role: str  # one of ROLES, or TOOL_CALL / TOOL_RESULT before folding
    content: str
    field: str  # where it came from, e.g. "conversations[2].value"


def text_field(value: object, field: str, *, required: bool = True) -> str:
    """`value` as text, or a RowError naming `field`. Missing optional fields give ""."""
    if value is None or (isinstance(value, str) and is_blank(value)):
        if required:
            missing = "is missing" if value is None else "is empty" + _invisible(value)
            raise RowError(field, missing, f'put the text in "{field}", or delete the row')
        return ""
    if not isinstance(value, str):
        raise RowError(field, f"should be text but is {type_name(value)}", "write it as a JSON string in quotes")
    return value


def _invisible(blank: str) -> str:
    return " (it holds only invisible characters, such as zero-width spaces)" if blank.strip() else ""


def check_listed_turns(items: list, field: str) -> None:
    """Refuse a row listing more turns than could ever make one example, before any is converted."""
    if len(items) > MAX_LISTED_TURNS:
        raise RowError(field, f"lists {len(items):,} turns; an example may have at most {MAX_TURNS} "
                       f"(and a row may list at most {MAX_LISTED_TURNS:,} before tool turns are merged)",
                       "split the conversation into several examples")


def has_tools(tools: object) -> bool:
    """A `tools` field that lists something ("[]" and "" list nothing)."""
    if isinstance(tools, str):
        tools = tools.strip()
        return bool(tools) and tools != "[]"
    return bool(tools)


def with_tool_listing(turns: list[Turn], tools: object) -> list[Turn]:
    """Kept tool rows: the functions on offer go into the system prompt, as text."""
    listing = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
    text = f"[available functions]\n{listing}"
    if turns and turns[0].role == "system":
        return [Turn("system", f"{turns[0].content}\n\n{text}", turns[0].field), *turns[1:]]
    return [Turn("system", text, "tools"), *turns]


def fold_tool_turns(turns: list[Turn], *, keep_tool_turns: bool) -> list[Turn]:
    """Drop the row (SkipRow) if it has tool turns, or keep them as plain text.

    Kept, a tool call is something the assistant said and its result something the assistant was told,
    so they become assistant and user text; a turn next to one of the same role is merged into it.
    """
    if not any(t.role in (TOOL_CALL, TOOL_RESULT) for t in turns):
        return turns
    if not keep_tool_turns:
        raise SkipRow(TOOL_SKIP_REASON)
    folded: list[Turn] = []
    previous_was_tool = False
    for turn in turns:
        is_tool = turn.role in (TOOL_CALL, TOOL_RESULT)
        if turn.role == TOOL_CALL:
            turn = Turn("assistant", f"[function call]\n{turn.content}", turn.field)
        elif turn.role == TOOL_RESULT:
            turn = Turn("user", f"[function result]\n{turn.content}", turn.field)
        if folded and folded[-1].role == turn.role and (is_tool or previous_was_tool):
            folded[-1] = Turn(turn.role, f"{folded[-1].content}\n\n{turn.content}", folded[-1].field)
        else:
            folded.append(turn)
        previous_was_tool = is_tool
    return folded


def _shape_error(turns: list[Turn], problem: ShapeProblem) -> RowError:
    """storage's rule for the order of turns, worded for a file: the field of the message at fault."""
    if problem.kind == "no_turns":
        return RowError(None, "has only a system message", "add a user prompt and an assistant response")
    turn = turns[problem.index]
    if problem.kind == "system_not_first":
        return RowError(turn.field, "is a system message that is not the first message",
                        "move the system prompt to the start, or remove it")
    if problem.kind == "last_not_assistant":
        return RowError(turn.field, "is the last message but is not the assistant's",
                        "end the conversation with the assistant's response")
    first = problem.index == (1 if turns[0].role == "system" else 0)
    after = "first" if first else f"after a {turns[problem.index - 1].role} message"
    return RowError(turn.field, f"is a {turn.role} message {after}; turns must alternate user/assistant, "
                    "starting with user", f"make it {'an assistant' if problem.expected == 'assistant' else 'a user'} "
                    "message, or merge it with its neighbour")


def to_conversation(turns: list[Turn]) -> Conversation:
    """Check the conversation rules and return plain messages; text is kept exactly as written.

    Rules: an optional leading system message, then user and assistant turns alternating, starting
    with user and ending with assistant, none of them empty.
    """
    if not turns:
        raise RowError(None, "has no messages", "give at least a prompt and a response")
    for turn in turns:
        if turn.role not in ROLES:
            raise RowError(turn.field, f"has role {turn.role!r}", f"use one of {', '.join(ROLES)}")
        if is_blank(turn.content):
            raise RowError(turn.field, f"is an empty {turn.role} message{_invisible(turn.content)}",
                           "write some text, or remove that message")
    problem = shape_problem([t.role for t in turns])
    if problem is not None:
        raise _shape_error(turns, problem)
    return [{"role": t.role, "content": t.content} for t in turns]
