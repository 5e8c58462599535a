"""Per-guild settings, stored as the JSON of the fields that differ from GuildSettings' defaults."""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from storage.records import GuildSettings

if TYPE_CHECKING:
    from storage.db import Database

FIELDS = {f.name: f for f in dataclasses.fields(GuildSettings) if f.name != "guild_id"}
#: The numeric settings' allowed ranges, inclusive (the bot's /config help shows them too).
SETTING_RANGES = {"temperature": (0.0, 2.0), "top_k": (1, 1000), "max_tokens": (16, 4096),
                  "min_new_examples": (1, 100_000), "max_turns": (1, 20), "preference_up_votes": (1, 1000),
                  "preference_down_votes": (1, 1000), "moderator_vote_weight": (1, 100)}


class SettingError(ValueError):
    """Names the setting, the value given and what is allowed."""

    @classmethod
    def invalid(cls, name: str, raw: str, expected: str) -> "SettingError":
        return cls(f"{name} = {raw!r} is not valid: expected {expected}.")


def parse_setting(name: str, raw: str) -> Any:
    """Turn a setting's text into its value, or explain why not. Roles and channels are given by id
    (the bot turns Discord's mentions into ids first: bot/replies.py)."""
    from storage.schedule import parse_schedule

    if name not in FIELDS:
        raise SettingError(f"Unknown setting {name!r}. Settings: {', '.join(sorted(FIELDS))}.")
    raw = raw.strip()
    default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else FIELDS[name].default_factory()
    try:
        if name == "moderator_role_ids":
            return [int(x) for x in raw.replace(",", " ").split()]
        if name == "golden_questions":
            value = json.loads(raw)
            if not isinstance(value, list) or not all(
                    isinstance(q, dict) and isinstance(q.get("question"), str) and isinstance(q.get("expect"), str)
                    for q in value):
                raise ValueError
            return value
        if name == "review_channel_id":
            return None if raw.lower() in ("", "none", "off") else int(raw)
        if isinstance(default, bool):
            if raw.lower() in ("true", "yes", "on", "1"):
                return True
            if raw.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    except (ValueError, json.JSONDecodeError):
        hint = {
            "golden_questions": 'a JSON list like [{"question": "...", "expect": "..."}]',
            "moderator_role_ids": "role ids separated by spaces",
            "review_channel_id": "a channel id, or 'off'",
        }.get(name, type(default).__name__)
        raise SettingError.invalid(name, raw, hint) from None
    if name in SETTING_RANGES:
        lo, hi = SETTING_RANGES[name]
        if not lo <= value <= hi:
            raise SettingError(f"{name} = {raw!r} is out of range: use a value from {lo} to {hi}.")
    if name == "schedule":
        parse_schedule(value)  # raises SettingError with the allowed forms
    if name == "system_prompt" and len(value) > 2000:
        raise SettingError("system_prompt is too long: keep it under 2,000 characters.")
    if name == "reaction_emoji" and not value:
        raise SettingError("reaction_emoji cannot be empty: give one emoji, e.g. 📚.")
    return value


class GuildSettingsRepository:
    def __init__(self, db: "Database"):
        self.db = db

    async def get(self, guild_id: int) -> GuildSettings:
        row = await self.db.fetchone("SELECT data FROM guild_settings WHERE guild_id=?", (guild_id,))
        stored = json.loads(row["data"]) if row else {}
        known = {k: v for k, v in stored.items() if k in FIELDS}
        return GuildSettings(guild_id=guild_id, **known)

    async def set(self, guild_id: int, **values: Any) -> GuildSettings:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise SettingError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        async with self.db.transaction() as conn:
            row = await self.db.fetchone("SELECT data FROM guild_settings WHERE guild_id=?", (guild_id,))
            data = json.loads(row["data"]) if row else {}
            data.update(values)
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, data) VALUES (?, ?) "
                "ON CONFLICT(guild_id) DO UPDATE SET data=excluded.data",
                (guild_id, json.dumps(data, ensure_ascii=False)))
        return await self.get(guild_id)

    async def guild_ids(self) -> list[int]:
        """Every guild that has settings, examples or runs (what the trainer daemon visits)."""
        rows = await self.db.fetchall(
            "SELECT guild_id FROM guild_settings UNION SELECT guild_id FROM examples "
            "UNION SELECT guild_id FROM training_runs ORDER BY 1")
        return [r["guild_id"] for r in rows]
