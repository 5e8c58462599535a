"""Text the bot posts: Discord's limits, code blocks, mentions, progress bars, times.

Model output goes through `split_message` (long answers become several messages, never a silent
cut, and a code block split across messages is closed and reopened so each part renders) and is
always sent with `NO_MENTIONS`, so an `@everyone` the model writes pings nobody.
"""
from __future__ import annotations

import math
import time

import discord

#: Discord's limits on text: characters in one message, and in one text field of a form (a modal).
MESSAGE_LIMIT = 2000
FORM_FIELD_LIMIT = 4000
FENCE = "```"
NO_MENTIONS = discord.AllowedMentions.none()

_CLOSE = "\n" + FENCE  # what closes an open code block at the end of a part


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into parts of at most `limit` characters, at line breaks where possible.

    A part that ends inside a ``` code block gets a closing fence, and the next part reopens the
    block with the same opening line (```python stays python). Lines longer than a part are cut
    at a space if there is one. Whitespace-only parts are dropped (Discord refuses them).
    """
    if limit < 40:
        raise ValueError("limit too small to split with code fences")
    if len(text) <= limit:
        return [text] if text.strip() else []
    parts: list[str] = []
    current = ""
    fence: str | None = None  # the opening line of the code block `current` ends inside

    def flush() -> None:
        nonlocal current
        if fence is not None:
            parts.append(current.rstrip("\n") + _CLOSE)
            current = fence + "\n"
        else:
            parts.append(current.rstrip("\n"))
            current = ""

    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        after = fence
        if _toggles_fence(stripped):
            after = None if fence is not None else stripped
        # Keep room for reopening a block (its opening line) and for closing it.
        room = limit - len(_CLOSE) - len(fence or after or "") - 1
        for piece in _cut_line(line, room):
            closing = len(_CLOSE) if after is not None else 0
            if current.strip() and len(current) + len(piece) + closing > limit:
                flush()
            current += piece
        fence = after
    if current.strip() and current.strip() != fence:
        parts.append(current.rstrip("\n"))
    return [p for p in parts if p.strip()]


def _cut_line(line: str, room: int) -> list[str]:
    """A line as pieces of at most `room` characters, cut after a space when one is near the end."""
    room = max(room, 20)
    pieces = []
    while len(line) > room:
        cut = line.rfind(" ", room // 2, room)
        cut = room if cut == -1 else cut + 1
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def _toggles_fence(stripped_line: str) -> bool:
    """A line starting with ``` opens or closes a block, unless it also closes it (```x```)."""
    return stripped_line.startswith(FENCE) and stripped_line.count(FENCE) % 2 == 1


def has_balanced_fences(part: str) -> bool:
    """True when every ``` code block opened in `part` is closed in it."""
    return sum(1 for line in part.splitlines() if _toggles_fence(line.strip())) % 2 == 0


def progress_bar(done: float, total: float, width: int = 20) -> str:
    """`▰▰▰▰▱▱▱▱ 50%`: a text bar for step/total (total 0 shows an empty bar)."""
    fraction = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "▰" * filled + "▱" * (width - filled) + f" {fraction:.0%}"


def format_duration(seconds: float | None) -> str:
    """`1h 02m`, `3m 05s`, `42s`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def discord_timestamp(when: float, style: str = "R") -> str:
    """`<t:1700000000:R>`: Discord shows it in each reader's time zone ("in 12 seconds")."""
    return f"<t:{int(math.ceil(when))}:{style}>"


def retry_hint(when: float, now: float | None = None) -> str:
    """"<t:…:R> (in 7 s)": when to try again, readable with or without timestamp rendering."""
    now = time.time() if now is None else now
    wait = max(1, int(math.ceil(when - now)))
    return f"{discord_timestamp(when)} (in {wait} s)"


def shorten(text: str, limit: int, marker: str = "…") -> str:
    """For previews only (embed fields, labels): model answers are split, never shortened."""
    return text if len(text) <= limit else text[: max(limit - len(marker), 0)] + marker


def learning_scores(metrics: dict) -> str | None:
    """What a version knew when its gate judged it, in words (None for versions from before the recall gate).

    Shared by the training-progress card and `/model status|history`.
    """
    if metrics.get("taught_recall") is None:
        return None
    probed = len(metrics.get("probed", ()))
    parts = [f"answers {len(metrics.get('taught_known', ()))}/{probed} taught questions",
             f"{len(metrics.get('paraphrase_known', ()))}/{probed} asked differently"]
    if metrics.get("drift") is not None:
        parts.append(f"drift {metrics['drift']:+.1%} from the base on general questions")
    text = ", ".join(parts)
    previous = metrics.get("previous") or {}
    if previous.get("taught_recall") is not None:
        name = "the base model" if previous.get("name") == "base" else previous.get("name", "before")
        text += (f" ({name}: {previous['taught_recall']:.0%} and {previous['paraphrase_recall']:.0%})")
    return text[:1].upper() + text[1:] + "."
