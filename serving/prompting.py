"""What a guild's question becomes before it reaches a model: the guild's system prompt first, the
taught answers nearest it for a version trained with notes (serving/notes.py), and the guild's
generation options. Shared by /ask, `guildtune ask` and the demo.

Text goes on exactly as typed: each server encodes it so that it never becomes a control token
(serving/chat_encoding.py), so nothing here escapes or cuts what a member wrote."""
from __future__ import annotations

from typing import Any

from serving.notes import NoteIndex, version_note_count, with_notes
from serving.protocol import GenerationOptions
from storage.records import GuildSettings, ModelVersion


def guild_messages(gs: GuildSettings, question: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if gs.system_prompt.strip():
        messages.insert(0, {"role": "system", "content": gs.system_prompt})
    return messages


def guild_options(gs: GuildSettings, timeout_s: float) -> GenerationOptions:
    return GenerationOptions(temperature=gs.temperature, top_k=gs.top_k, max_tokens=gs.max_tokens,
                             timeout_s=timeout_s)


class GuildNotes:
    """Each guild's notes over what it has taught now (trainer.dataset.taught_conversations: what a run would
    train on), rebuilt only when the guild's examples changed: an approval, an edit, a deletion or /forget."""

    def __init__(self, db: Any):
        self.db = db
        self._indexes: dict[int, tuple[tuple, NoteIndex]] = {}

    async def index(self, guild_id: int) -> NoteIndex:
        from trainer.dataset import taught_conversations, usable_examples

        fingerprint = await self.db.examples.fingerprint(guild_id)
        cached = self._indexes.get(guild_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        examples = await self.db.examples.approved(guild_id)
        voted = await self.db.examples.preferences(guild_id)
        taught, superseded = taught_conversations([(e.id, e.messages) for e in examples],
                                                  [(e.id, e.messages, e.label) for e in voted])
        index = NoteIndex.of_conversations(turns for _, turns in usable_examples(taught, None, superseded).kept)
        self._indexes[guild_id] = (fingerprint, index)
        return index

    async def messages(self, gs: GuildSettings, version: ModelVersion | None, question: str) -> list[dict[str, str]]:
        """The question as `version` was trained to be asked: with notes if it was trained with them."""
        messages = guild_messages(gs, question)
        count = version_note_count(version)
        if not count:
            return messages
        return with_notes(messages, await self.index(gs.guild_id), count)
