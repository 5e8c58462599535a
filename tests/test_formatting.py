"""Splitting long model output for Discord, and the small text helpers the cogs share."""
from __future__ import annotations

import time

import discord
import pytest

from bot.formatting import (
    MESSAGE_LIMIT,
    NO_MENTIONS,
    discord_timestamp,
    format_duration,
    has_balanced_fences,
    progress_bar,
    retry_hint,
    shorten,
    split_message,
)


def code_lines(parts: list[str]) -> list[str]:
    """Every line of every part, without the fences the splitter added or kept."""
    return [line for p in parts for line in p.splitlines() if not line.strip().startswith("```")]


def test_short_text_is_one_part_and_blank_text_none():
    assert split_message("hello") == ["hello"]
    assert split_message("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]
    assert split_message("  \n ") == []


def test_prose_splits_at_line_breaks_without_losing_text():
    lines = [f"Line {i}: " + "word " * 15 for i in range(100)]
    text = "\n".join(lines)
    parts = split_message(text)
    assert len(parts) > 1 and all(len(p) <= MESSAGE_LIMIT for p in parts)
    assert [line for p in parts for line in p.splitlines()] == lines


def test_a_code_block_split_across_parts_is_closed_and_reopened_with_its_language():
    body = [f"x_{i} = compute({i})  # a comment to make the line longer" for i in range(120)]
    text = "Before\n```python\n" + "\n".join(body) + "\n```\nAfter"
    parts = split_message(text)
    assert len(parts) >= 3
    for p in parts:
        assert len(p) <= MESSAGE_LIMIT and has_balanced_fences(p)
    assert all(p.splitlines()[0] == "```python" for p in parts[1:-1])
    assert code_lines(parts) == ["Before", *body, "After"]


def test_several_code_blocks_and_inline_fences():
    block = "```js\n" + "\n".join(f"let v{i} = {i};" for i in range(150)) + "\n```"
    text = "Use ```inline``` fences too.\n" + block + "\nMiddle text\n" + block.replace("js", "rust")
    parts = split_message(text, limit=500)
    assert all(len(p) <= 500 and has_balanced_fences(p) for p in parts)
    assert code_lines(parts) == [line for line in text.splitlines() if not line.startswith("```")]


def test_a_single_huge_line_is_cut_at_spaces():
    text = " ".join(f"w{i}" for i in range(1500))
    parts = split_message(text)
    assert all(len(p) <= MESSAGE_LIMIT for p in parts)
    assert "".join(parts).split() == text.split()
    solid = split_message("a" * 4500)  # no space at all: cut hard
    assert len(solid) == 3 and all(len(p) <= MESSAGE_LIMIT for p in solid) and "".join(solid) == "a" * 4500


def test_split_refuses_a_limit_too_small_for_fences():
    with pytest.raises(ValueError):
        split_message("text", limit=10)


def test_no_mentions_parses_nothing():
    assert NO_MENTIONS.to_dict() == {"parse": []}
    assert isinstance(NO_MENTIONS, discord.AllowedMentions)


def test_progress_bar_and_durations():
    assert progress_bar(5, 10, width=10) == "▰▰▰▰▰▱▱▱▱▱ 50%"
    assert progress_bar(0, 0, width=4) == "▱▱▱▱ 0%"
    assert progress_bar(12, 10, width=4) == "▰▰▰▰ 100%"
    assert format_duration(42) == "42s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(3725) == "1h 02m"
    assert format_duration(None) == "?" and format_duration(float("nan")) == "?"


def test_timestamps_and_retry_hint():
    assert discord_timestamp(1700000000.2) == "<t:1700000001:R>"
    now = time.time()
    assert retry_hint(now + 7.2, now) == f"<t:{int(now + 7.2) + 1}:R> (in 8 s)"
    assert retry_hint(now - 5, now).endswith("(in 1 s)")
    assert shorten("abcdef", 4) == "abc…" and shorten("abc", 4) == "abc"
