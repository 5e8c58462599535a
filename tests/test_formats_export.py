"""Exporting conversations, and reading every export back into the identical conversations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.formats import EXPORT_FORMATS, EXPORT_SUFFIXES, export_conversations, parse_file

DATASETS = Path("/work/shared/datasets")
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="shared demo datasets not mounted")

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "You are the guild's helper.\nBe brief."},
     {"role": "user", "content": "Hi {{name}}"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Raid time?\n\nWe play on Fridays."}, {"role": "assistant", "content": "20:00 UTC."},
     {"role": "user", "content": "And the boss?"}, {"role": "assistant", "content": "The \"Lich\", again."}],
    [{"role": "user", "content": "  padded text, tabs\tand a line\u2028separator  "},
     {"role": "assistant", "content": "### Human: not a marker here\n### Assistant: nor here"}],
    [{"role": "system", "content": "你是一个有用的助手。"}, {"role": "user", "content": "你好 👋"},
     {"role": "assistant", "content": "你好！有什么可以帮你的吗？"}],
]


def export_to(tmp_path: Path, conversations, format: str) -> Path:
    path = tmp_path / f"export_{format}{EXPORT_SUFFIXES[format]}"
    path.write_text(export_conversations(conversations, format), encoding="utf-8")
    return path


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_export_then_import_gives_identical_conversations(tmp_path, format):
    result = parse_file(export_to(tmp_path, iter(CONVERSATIONS), format))
    assert result.format == format
    assert [r.conversation for r in result.rows] == CONVERSATIONS
    assert result.skipped == [] and result.warnings == []


def test_messages_export_is_one_trl_messages_object_per_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    text = export_conversations(CONVERSATIONS, "messages")
    assert text.endswith("\n")
    assert [json.loads(line) for line in text.split("\n")[:-1]] == [{"messages": c} for c in CONVERSATIONS]
    assert "你好" in text  # written as UTF-8 text, not \u escapes

    import datasets

    path = export_to(tmp_path, CONVERSATIONS, "messages")
    dataset = datasets.load_dataset("json", data_files=str(path), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert dataset.column_names == ["messages"]
    assert [row["messages"] for row in dataset] == CONVERSATIONS


def test_alpaca_export_shape():
    rows = json.loads(export_conversations(CONVERSATIONS[:2], "alpaca"))
    assert rows[0] == {"system": "", "instruction": "What is 2+2?", "input": "", "output": "4", "history": []}
    assert rows[1] == {
        "system": "You are the guild's helper.\nBe brief.", "instruction": "And the boss?", "input": "",
        "output": "The \"Lich\", again.",
        "history": [["Hi {{name}}", "Hello!"], ["Raid time?\n\nWe play on Fridays.", "20:00 UTC."]]}


def test_sharegpt_export_shape():
    rows = json.loads(export_conversations(CONVERSATIONS[1:2], "sharegpt"))
    assert rows == [{"conversations": [
        {"from": "human", "value": "Hi {{name}}"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Raid time?\n\nWe play on Fridays."}, {"from": "gpt", "value": "20:00 UTC."},
        {"from": "human", "value": "And the boss?"}, {"from": "gpt", "value": "The \"Lich\", again."}],
        "system": "You are the guild's helper.\nBe brief."}]


@needs_datasets
@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_real_dataset_round_trips(tmp_path, format):
    original = [r.conversation for r in parse_file(DATASETS / "alpaca_zh_demo.json").rows]
    tools = [r.conversation for r in parse_file(DATASETS / "glaive_toolcall_en_demo.json", keep_tool_turns=True).rows]
    again = parse_file(export_to(tmp_path, original + tools, format))
    assert len(again.rows) == 1300
    assert [r.conversation for r in again.rows] == original + tools


@pytest.mark.parametrize("conversation, expected", [
    ([{"role": "user", "content": "Q"}], 'field "message 1" is the last message but is not the assistant\'s'),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}],
     'field "message 2" is an empty assistant message'),
    ([{"role": "bot", "content": "Q"}, {"role": "assistant", "content": "A"}], "has role 'bot'"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": 5}], "message 2 has no text content"),
    ([{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}],
     "is a system message that is not the first message"),
    ([], "has no messages"),
])
def test_export_refuses_conversations_that_would_not_import_again(conversation, expected):
    for format in EXPORT_FORMATS:
        with pytest.raises(ValueError) as caught:
            export_conversations([CONVERSATIONS[0], conversation], format)
        assert str(caught.value).startswith("Conversation 2 can't be exported: ")
        assert expected in str(caught.value)


def test_unknown_export_format_and_empty_export():
    with pytest.raises(ValueError, match="Unknown export format 'csv': use one of messages, alpaca, sharegpt"):
        export_conversations(CONVERSATIONS, "csv")
    assert export_conversations([], "messages") == ""
    assert json.loads(export_conversations([], "alpaca")) == []
