"""Voted answers as TRL's conversational unpaired-preference rows, what `KTOTrainer` loads:

    {"prompt": [{"role": "user", "content": …}], "completion": [{"role": "assistant", "content": …}],
     "label": true}

`label` is true for a liked answer, false for a disliked one. The prompt is every turn before the
answer, the completion the answer alone, so a disliked answer is never a turn to imitate.
"""
from __future__ import annotations

from storage.records import Conversation


def from_conversation(conversation: Conversation, desirable: bool) -> dict:
    *prompt, answer = conversation
    return {"prompt": prompt, "completion": [answer], "label": desirable}
