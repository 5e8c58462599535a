"""What a guild's question becomes before it reaches a model: the guild's system prompt first,
and the guild's generation options. Shared by /ask and `guildtune ask`.

Text goes on exactly as typed: each server encodes it so that it never becomes a control token
(serving/chat_encoding.py), so nothing here escapes or cuts what a member wrote."""
from __future__ import annotations

from serving.protocol import GenerationOptions
from storage.records import GuildSettings


def guild_messages(gs: GuildSettings, question: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if gs.system_prompt.strip():
        messages.insert(0, {"role": "system", "content": gs.system_prompt})
    return messages


def guild_options(gs: GuildSettings, timeout_s: float) -> GenerationOptions:
    return GenerationOptions(temperature=gs.temperature, top_k=gs.top_k, max_tokens=gs.max_tokens,
                             timeout_s=timeout_s)
