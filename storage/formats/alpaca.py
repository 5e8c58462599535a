"""Alpaca rows: instruction / input / output, optional system and history ([[question, answer], …]).

The input is appended to the instruction after a blank line; history pairs become earlier turns.
"""
from __future__ import annotations

from storage.formats.errors import RowError, type_name
from storage.formats.turns import Turn, check_listed_turns, text_field, to_conversation as checked
from storage.records import Conversation


def matches(row: dict) -> bool:
    return "instruction" in row and "output" in row


def to_conversation(row: dict) -> Conversation:
    turns = []
    system = text_field(row.get("system"), "system", required=False)
    if system:
        turns.append(Turn("system", system, "system"))
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", f"should be a list of [question, answer] pairs but is {type_name(history)}",
                       'write it like [["earlier question", "earlier answer"]], or remove it')
    check_listed_turns(history, "history")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RowError(f"history[{i}]", "should be a [question, answer] pair",
                           'write each earlier exchange as ["question", "answer"]')
        turns.append(Turn("user", text_field(pair[0], f"history[{i}][0]"), f"history[{i}][0]"))
        turns.append(Turn("assistant", text_field(pair[1], f"history[{i}][1]"), f"history[{i}][1]"))
    prompt = text_field(row.get("instruction"), "instruction")
    extra = text_field(row.get("input"), "input", required=False)
    turns.append(Turn("user", f"{prompt}\n\n{extra}" if extra else prompt, "instruction"))
    turns.append(Turn("assistant", text_field(row.get("output"), "output"), "output"))
    return checked(turns)


def from_conversation(conversation: Conversation) -> dict:
    """The alpaca row for a checked conversation: the last exchange is instruction/output, the rest history."""
    system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
    body = conversation[1:] if system else conversation
    pairs = [[body[i]["content"], body[i + 1]["content"]] for i in range(0, len(body), 2)]
    *history, (instruction, output) = pairs
    return {"system": system, "instruction": instruction, "input": "", "output": output, "history": history}
