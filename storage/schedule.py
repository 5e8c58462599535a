"""Retrain schedules a guild can set: 'off', 'interval:6h' / 'interval:30m', 'daily:03:00' (UTC)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

ALLOWED = "'off', 'interval:<N>h' or 'interval:<N>m' (e.g. interval:6h), or 'daily:HH:MM' in UTC (e.g. daily:03:00)"


@dataclass(frozen=True)
class Schedule:
    kind: str  # off | interval | daily
    seconds: int = 0
    hour: int = 0
    minute: int = 0

    def next_due(self, last_run_at: float | None, now: float) -> float | None:
        """When a scheduled run is next due (None: never). A guild that never trained is due now."""
        if self.kind == "off":
            return None
        if last_run_at is None:
            return now
        if self.kind == "interval":
            return last_run_at + self.seconds
        last = datetime.fromtimestamp(last_run_at, tz=timezone.utc)
        slot = last.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if slot <= last:
            slot += timedelta(days=1)
        return slot.timestamp()


def parse_schedule(text: str) -> Schedule:
    from storage.guild_settings import SettingError

    text = text.strip().lower()
    if text == "off":
        return Schedule("off")
    if m := re.fullmatch(r"interval:(\d+)([hm])", text):
        n = int(m.group(1))
        seconds = n * (3600 if m.group(2) == "h" else 60)
        if seconds < 300:
            raise SettingError(f"schedule {text!r} is too frequent: use at least interval:5m.")
        return Schedule("interval", seconds=seconds)
    if m := re.fullmatch(r"daily:(\d{1,2}):(\d{2})", text):
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour < 24 and minute < 60:
            return Schedule("daily", hour=hour, minute=minute)
    raise SettingError(f"schedule {text!r} is not valid: use {ALLOWED}.")
