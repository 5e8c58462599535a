"""Importing datasets: every format, the real demo files, and bad input that must be refused clearly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from storage.formats import FORMATS, TOOL_SKIP_REASON, ImportFormatError, parse_file

DATASETS = Path("/work/shared/datasets")
FIXTURES = Path(__file__).parent / "data" / "formats"
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="shared demo datasets not mounted")


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_json(path: Path, value: object) -> Path:
    return write(path, json.dumps(value, ensure_ascii=False, indent=2))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def import_error(*args, **kwargs) -> str:
    with pytest.raises(ImportFormatError) as caught:
        parse_file(*args, **kwargs)
    return str(caught.value)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


# --- the real demo files ------------------------------------------------------------------------

@needs_datasets
@pytest.mark.parametrize("name, count", [("alpaca_en_demo.json", 999), ("alpaca_zh_demo.json", 1000),
                                         ("identity.json", 91)])
def test_real_alpaca_files_import_every_row(name, count):
    raw = json.loads((DATASETS / name).read_text(encoding="utf-8"))
    result = parse_file(DATASETS / name)
    assert result.format == "alpaca"
    assert len(result.rows) == count == len(raw)
    assert result.skipped == [] and result.warnings == []
    for row, source in zip(result.rows, raw):
        prompt = f"{source['instruction']}\n\n{source['input']}" if source["input"] else source["instruction"]
        assert row.conversation == [user(prompt), assistant(source["output"])]


@needs_datasets
def test_identity_placeholders_are_kept_as_written():
    result = parse_file(DATASETS / "identity.json")
    first = result.rows[0]
    assert first.location == "row 1 (line 2)"
    assert first.conversation == [user("hi"), assistant(
        "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?")]
    raw = json.loads((DATASETS / "identity.json").read_text(encoding="utf-8"))
    assert sum("{{name}}" in r.conversation[1]["content"] for r in result.rows) == sum(
        "{{name}}" in r["output"] for r in raw) == 77


@needs_datasets
def test_glaive_tool_rows_are_skipped_with_one_counted_reason():
    raw = json.loads((DATASETS / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    tool_rows = [r for r in raw if r.get("tools", "[]").strip() != "[]"
                 or any(t["from"] in ("function_call", "observation") for t in r["conversations"])]
    assert len(tool_rows) == 191  # the other 109 offer no tool ("tools": "[]") and are plain chats
    result = parse_file(DATASETS / "glaive_toolcall_en_demo.json")
    assert result.format == "sharegpt"
    assert len(result.rows) == 109
    assert len(result.skipped) == 191
    assert result.skipped_counts() == {TOOL_SKIP_REASON: 191}
    assert "Skipped 191 row(s)" in result.summary() and "--keep-tool-turns" in result.summary()
    assert not any("[function" in m["content"] for r in result.rows for m in r.conversation)


@needs_datasets
def test_glaive_tool_rows_kept_as_text_with_the_flag():
    raw = json.loads((DATASETS / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    result = parse_file(DATASETS / "glaive_toolcall_en_demo.json", keep_tool_turns=True)
    assert len(result.rows) == 300 and result.skipped == []
    with_calls = [r for r in result.rows if any("[function call]" in m["content"] for m in r.conversation)]
    assert len(with_calls) == sum(any(t["from"] == "function_call" for t in r["conversations"]) for r in raw) == 153
    first = result.rows[0].conversation
    assert first[0]["role"] == "system" and "search_recipes" in first[0]["content"]
    call = raw[0]["conversations"][3]["value"]
    observation = raw[0]["conversations"][4]["value"]
    assert first[4] == assistant(f"[function call]\n{call}")
    assert first[5] == user(f"[function result]\n{observation}")
    assert first[6] == assistant(raw[0]["conversations"][5]["value"])
    # Rows whose tools list is empty get no tool listing in a system prompt.
    assert sum(r.conversation[0]["role"] == "system" for r in result.rows) == sum(r["tools"] != "[]" for r in raw)


# --- alpaca -------------------------------------------------------------------------------------

def test_alpaca_with_system_history_and_input(tmp_path):
    path = write_json(tmp_path / "a.json", [{
        "system": "You are terse.", "instruction": "Summarise:", "input": "A long text.", "output": "Short.",
        "history": [["Hi", "Hello"], ["How are you?", "Fine."]]}])
    result = parse_file(path)
    assert result.rows[0].conversation == [
        system("You are terse."), user("Hi"), assistant("Hello"), user("How are you?"), assistant("Fine."),
        user("Summarise:\n\nA long text."), assistant("Short.")]


def test_alpaca_bad_rows_are_all_listed_with_row_line_and_field(tmp_path):
    path = write(tmp_path / "bad.json", "\n".join([
        "[",
        '  {"instruction": "ok", "output": "fine"},',
        '  {"instruction": "no answer", "output": ""},',
        '  {"instruction": 42, "output": "x"},',
        '  {"output": "orphan"},',
        '  {"instruction": "q", "output": "a", "history": [["only one"]]},',
        '  "just a string"',
        "]"]))
    message = import_error(path)
    assert "bad.json: 5 of 6 row(s) can't be imported as alpaca; nothing was imported." in message
    assert 'row 2 (line 3): field "output" is empty' in message
    assert 'row 3 (line 4): field "instruction" should be text but is a number' in message
    assert 'row 4 (line 5): field "instruction" is missing' in message
    assert 'row 5 (line 6): field "history[0]" should be a [question, answer] pair' in message
    assert "row 6 (line 7): is text, not an object" in message
    assert "--skip-invalid` to import the 1 valid row(s)" in message


def test_skip_invalid_imports_the_valid_rows_and_reports_the_rest(tmp_path):
    path = write_json(tmp_path / "a.json", [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": " "},
                                            {"instruction": "q3", "output": "a3"}])
    result = parse_file(path, skip_invalid=True)
    assert [r.conversation[0]["content"] for r in result.rows] == ["q1", "q3"]
    assert [(s.location, s.reason) for s in result.skipped] == [
        ("row 2 (line 6)", 'invalid: field "output" is empty. Fix: put the text in "output", or delete the row')]


def test_error_lists_every_row_but_the_message_stays_readable(tmp_path):
    path = write_json(tmp_path / "a.json", [{"instruction": f"q{i}", "output": ""} for i in range(30)])
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path)
    assert len(caught.value.problems) == 30
    assert "… and 10 more." in caught.value.message
    assert "--skip-invalid" not in caught.value.message  # nothing valid to import


# --- sharegpt -----------------------------------------------------------------------------------

def test_sharegpt_multi_turn_with_system_field_and_role_aliases(tmp_path):
    path = write_json(tmp_path / "s.json", [
        {"system": "Be kind.", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
            {"from": "user", "value": "Bye"}, {"from": "assistant", "value": "See you"}]},
        {"conversations": [{"from": "system", "value": "Sys"}, {"from": "human", "value": "Q"},
                           {"from": "gpt", "value": "A"}]},
    ])
    result = parse_file(path)
    assert result.format == "sharegpt"
    assert [r.conversation for r in result.rows] == [
        [system("Be kind."), user("Hi"), assistant("Hello"), user("Bye"), assistant("See you")],
        [system("Sys"), user("Q"), assistant("A")]]


def test_sharegpt_messages_variant_with_from_value(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"from": "human", "value": "Q"},
                                                            {"from": "gpt", "value": "A"}]}])
    result = parse_file(path)
    assert result.format == "sharegpt" and result.rows[0].conversation == [user("Q"), assistant("A")]


def test_sharegpt_function_turns_without_tools_field_are_skipped(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    path = write_json(tmp_path / "s.json", [row, {"conversations": row["conversations"][:1] + [
        {"from": "gpt", "value": "No tools needed."}]}])
    result = parse_file(path)
    assert [s.location for s in result.skipped] == ["row 1 (line 2)"]
    assert result.rows[0].conversation == [user("Weather?"), assistant("No tools needed.")]
    kept = parse_file(path, keep_tool_turns=True)
    assert kept.rows[0].conversation == [user("Weather?"), assistant("[function call]\n{}"),
                                         user("[function result]\nsunny"), assistant("Sunny.")]


def test_sharegpt_bad_rows(tmp_path):
    path = write_json(tmp_path / "s.json", [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "Q"}]},
        {"conversations": []},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": None}]},
    ])
    message = import_error(path)
    assert "field \"conversations[1].from\" is 'robot', which is not a known speaker" in message
    assert "use human, gpt or system" in message
    assert 'field "conversations[1].value" is a user message after a user message' in message
    assert 'row 3 (line 26): field "conversations[0].value" is the last message but is not the assistant\'s' in message
    assert 'field "conversations" is empty' in message
    assert 'field "conversations[1].value" is missing' in message


# --- OpenAI messages ----------------------------------------------------------------------------

def test_messages_jsonl_with_text_parts(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [system("S"), user("Q"), assistant("A"), user("Q2"), assistant("A2")]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one"},
                                                   {"type": "text", "text": "part two"}]}, assistant("ok")]},
    ])
    result = parse_file(path)
    assert result.format == "messages"
    assert [r.location for r in result.rows] == ["line 1", "line 2"]
    assert result.rows[1].conversation == [user("part one\npart two"), assistant("ok")]


def test_messages_with_tool_calls_skipped_or_kept(tmp_path):
    call = [{"type": "function", "function": {"name": "now", "arguments": "{}"}}]
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [
        user("Time?"), {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "content": "12:00"}, assistant("Noon.")]}])
    assert parse_file(path).skipped_counts() == {TOOL_SKIP_REASON: 1}
    kept = parse_file(path, keep_tool_turns=True).rows[0].conversation
    assert kept == [user("Time?"), assistant("[function call]\n" + json.dumps(call)),
                    user("[function result]\n12:00"), assistant("Noon.")]


def test_jsonl_bad_lines_reported_with_their_line_numbers():
    message = import_error(FIXTURES / "bad_lines.jsonl")
    assert "bad_lines.jsonl: 3 of 5 row(s) can't be imported as messages" in message
    assert "line 2: is not valid JSON (Unterminated string starting at, column 89)" in message
    assert 'line 4: field "messages[1].content" is empty' in message
    assert 'line 5: field "messages[1].content" is a user message after a user message' in message
    result = parse_file(FIXTURES / "bad_lines.jsonl", skip_invalid=True)
    assert [r.location for r in result.rows] == ["line 1", "line 6"]
    assert result.rows[1].conversation == [system("Be brief."), user("2+2?"), assistant("4")]


def test_jsonl_with_every_line_broken_lists_them_all(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"messages": [\n\n{"oops"}\n[1, 2]\n')
    message = import_error(path)
    assert "m.jsonl: 3 of 3 row(s) can't be imported as JSON objects; nothing was imported." in message
    assert "line 1: is not valid JSON" in message and "line 3: is not valid JSON" in message
    assert "line 4: is a list, not an object" in message


def test_json_named_file_holding_json_lines_is_read_line_by_line(tmp_path):
    path = write_jsonl(tmp_path / "m.json", [{"messages": [user("Q"), assistant("A")]}] * 2)
    assert [r.location for r in parse_file(path).rows] == ["line 1", "line 2"]


# --- guanaco ------------------------------------------------------------------------------------

def test_guanaco_text_rows(tmp_path):
    text = "### Human: Hola### Assistant: ¡Hola! ¿Cómo estás?### Human: Bien### Assistant: Me alegro."
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": text}])
    result = parse_file(path)
    assert result.format == "guanaco"
    assert result.rows[0].conversation == [user("Hola"), assistant("¡Hola! ¿Cómo estás?"), user("Bien"),
                                           assistant("Me alegro.")]


def test_guanaco_txt_file_splits_conversations_at_blank_lines():
    result = parse_file(FIXTURES / "chat.txt")
    assert result.format == "guanaco"
    assert [r.location for r in result.rows] == ["conversation 1 (line 1)", "conversation 2 (line 4)"]
    assert [r.conversation for r in result.rows] == [
        [user("What is a guild?"), assistant("A group of players who play together.")],
        [system("You answer in one word."), user("Capital of France?"), assistant("Paris."),
         user("And of Italy?"), assistant("Rome.")]]


def test_guanaco_bad_text(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"text": "Intro ### Human: Q ### Assistant: A"},
                                             {"text": "### Human: Q only"},
                                             {"text": "### Human: Q ### Assistant:   "}])
    message = import_error(path, format="guanaco")
    assert "line 1: field \"text\" has text before the first \"###\" marker ('Intro')" in message
    assert 'line 2: field "text (turn 1, ### Human)" is the last message but is not the assistant\'s' in message
    assert 'line 3: field "text (turn 2, ### Assistant)" is an empty assistant message' in message


# --- pairs --------------------------------------------------------------------------------------

def test_pairs_json():
    result = parse_file(FIXTURES / "pairs.json")
    assert result.format == "pairs"
    assert [r.conversation for r in result.rows] == [
        [user("Translate 'chat' to English."), assistant("cat")],
        [system("You translate French to English."), user("Translate 'chien' to English."), assistant("dog")]]


def test_pairs_with_a_column_map_and_bad_rows(tmp_path):
    path = write_json(tmp_path / "p.json", [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": 3}, {"q": "", "a": "A3"}])
    message = import_error(path, column_map={"prompt": "q", "response": "a"})
    assert 'row 2 (line 6): field "a" should be text but is a number' in message
    assert 'row 3 (line 10): field "q" is empty' in message
    result = parse_file(path, column_map={"prompt": "q", "response": "a"}, skip_invalid=True)
    assert result.format == "pairs" and result.rows[0].conversation == [user("Q1"), assistant("A1")]


# --- CSV and XLSX -------------------------------------------------------------------------------

def test_csv_default_columns_with_bom_quotes_and_multiline_cells(tmp_path):
    path = write(tmp_path / "d.csv", '\ufeffprompt,response,system\n"Hi, there","Line one\nline two",\n'
                                     'Second,"Say ""yes""",Be nice\n')
    result = parse_file(path)
    assert result.format == "csv"
    assert [(r.location, r.conversation) for r in result.rows] == [
        ("row 2", [user("Hi, there"), assistant("Line one\nline two")]),
        ("row 3", [system("Be nice"), user("Second"), assistant('Say "yes"')])]


def test_csv_instruction_input_output_semicolons_and_header_case(tmp_path):
    path = write(tmp_path / "d.csv", "Instruction;Input;Output\nTranslate;bonjour;hello\nCount;;1 2 3\n")
    assert [r.conversation for r in parse_file(path).rows] == [
        [user("Translate\n\nbonjour"), assistant("hello")], [user("Count"), assistant("1 2 3")]]


def test_csv_column_map(tmp_path):
    path = write(tmp_path / "faq.csv", "Id,Question,Answer,Notes\n1,Where?,Here.,x\n2,When?,Now.,\n\n")
    message = import_error(path)
    assert "no prompt and no response column found; its columns are 'Id', 'Question', 'Answer', 'Notes'" in message
    assert "--column prompt=Question --column response=Answer" in message
    result = parse_file(path, column_map={"prompt": "Question", "response": "answer"})
    assert [r.conversation for r in result.rows] == [[user("Where?"), assistant("Here.")],
                                                     [user("When?"), assistant("Now.")]]
    assert "has no column 'Reply' (mapped to response); its columns are 'Id', 'Question'" in import_error(
        path, column_map={"prompt": "Question", "response": "Reply"})
    assert "names 'answer_text', which is not a field" in import_error(
        path, column_map={"prompt": "Question", "answer_text": "Answer"})


def test_csv_bad_cells_and_header_only(tmp_path):
    path = write(tmp_path / "d.csv", "prompt,response\nQ1,\n,A2\nQ3,A3,stray\n")
    message = import_error(path)
    assert 'row 2: field "response" is empty' in message
    assert 'row 3: field "prompt" is empty' in message
    assert "row 4: has text in a column without a header ('stray')" in message
    assert "has a header row but no rows below it" in import_error(write(tmp_path / "h.csv", "prompt,response\n"))


def test_cp1252_csv_is_named_with_offset_and_iconv_fix():
    message = import_error(FIXTURES / "cp1252_prompts.csv")
    assert "cp1252_prompts.csv is not UTF-8 text: byte 0xE9 at byte offset 31 (line 2, column 15)" in message
    assert "café" in message  # the bytes, shown the way they were probably meant
    assert "iconv -f cp1252 -t utf-8 cp1252_prompts.csv > cp1252_prompts.utf8.csv" in message
    assert "CSV UTF-8" in message


def make_workbook(path: Path, rows: list[list[object]], title: str = "Sheet1") -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def test_xlsx_with_numbers_and_column_map(tmp_path):
    path = make_workbook(tmp_path / "qa.xlsx", [["Question", "Answer", "System"], ["2+2?", 4, "Math tutor"],
                                                [None, None, None], ["Pi?", 3.14, None]])
    result = parse_file(path, column_map={"prompt": "Question", "response": "Answer"})
    assert result.format == "xlsx"
    assert [(r.location, r.conversation) for r in result.rows] == [
        ("row 2", [user("2+2?"), assistant("4")]), ("row 4", [user("Pi?"), assistant("3.14")])]
    # The mapped columns replace the defaults, but a default column that is there (system) is still read.
    path2 = make_workbook(tmp_path / "qa2.xlsx", [["prompt", "response", "system"], ["Q", "A", "S"]])
    assert parse_file(path2).rows[0].conversation == [system("S"), user("Q"), assistant("A")]


def test_xlsx_bad_cells_and_unreadable_workbook(tmp_path):
    path = make_workbook(tmp_path / "qa.xlsx", [["prompt", "response"], ["Q", None]], title="Data")
    assert 'row 2: field "response" is empty' in import_error(path)
    fake = write(tmp_path / "fake.xlsx", "prompt,response\nQ,A\n")
    message = import_error(fake)
    assert "fake.xlsx is not a readable .xlsx workbook" in message and "CSV UTF-8" in message
    empty = make_workbook(tmp_path / "empty.xlsx", [], title="Blank")
    assert "empty.xlsx (sheet 'Blank') is empty" in import_error(empty)


def test_workbook_named_csv_is_recognised(tmp_path):
    path = make_workbook(tmp_path / "qa.csv", [["prompt", "response"], ["Q", "A"]])
    assert "is a zip archive (an Excel .xlsx workbook?)" in import_error(path)
    assert parse_file(path, format="xlsx").rows[0].conversation == [user("Q"), assistant("A")]


# --- whole-file problems ------------------------------------------------------------------------

def test_non_utf8_json_names_the_encoding_problem(tmp_path):
    text = json.dumps([{"instruction": "Où est le café ?", "output": "Là-bas."}], ensure_ascii=False)
    path = write(tmp_path / "fr.json", text.encode("cp1252"))
    message = import_error(path)
    assert message.startswith("fr.json is not UTF-8 text: byte 0xF9 at byte offset 19 (line 1, column 20)")
    assert "Windows-1252" in message and "iconv -f cp1252 -t utf-8 fr.json" in message
    write(path, text.encode("utf-8"))  # re-saved as UTF-8, as the message says: it imports
    assert parse_file(path).rows[0].conversation == [user("Où est le café ?"), assistant("Là-bas.")]


def test_mojibake_text_is_imported_as_written_with_a_warning(tmp_path):
    garbled = "Où est le café ?".encode("utf-8").decode("cp1252")  # UTF-8 read as Windows-1252 once
    path = write_json(tmp_path / "m.json", [{"instruction": "Say hi", "output": "ok"},
                                            {"instruction": garbled, "output": "Là-bas."}])
    result = parse_file(path)
    assert result.rows[1].conversation[0]["content"] == garbled
    assert len(result.warnings) == 1
    assert 'm.json line 7: "OÃ¹" looks like garbled text ("Où" saved through the wrong encoding once)' in result.warnings[0]
    assert result.warnings[0] in result.summary()


def test_utf8_bom_and_utf16_files(tmp_path):
    rows = [{"instruction": "Q", "output": "A"}]
    bom = write(tmp_path / "bom.json", b"\xef\xbb\xbf" + json.dumps(rows).encode())
    assert parse_file(bom).rows[0].conversation == [user("Q"), assistant("A")]
    utf16 = write(tmp_path / "u16.json", json.dumps(rows).encode("utf-16"))
    message = import_error(utf16)
    assert "u16.json is UTF-16 text, not UTF-8" in message and "iconv -f utf-16 -t utf-8" in message


def test_invalid_json_gives_line_and_column():
    message = import_error(FIXTURES / "broken_array.json")
    assert message.startswith("broken_array.json is not valid JSON: Expecting ',' delimiter at line 4, column 3")
    assert 'near `{"instruction": "Name a tree."' in message


@pytest.mark.parametrize("content, expected", [
    ("", "e.json is empty: there is nothing to import"),
    ("  \n\n ", "e.json is empty: there is nothing to import"),
    ("\ufeff\n", "e.json is empty: there is nothing to import"),
    ("[]", "e.json has no rows: there is nothing to import"),
    ("[\n]\n", "e.json has no rows: there is nothing to import"),
])
def test_empty_files(tmp_path, content, expected):
    assert expected in import_error(write(tmp_path / "e.json", content))


def test_unknown_format_lists_the_formats_and_how_to_force_one(tmp_path):
    path = write_json(tmp_path / "x.json", [{"question": "Q", "reply": "A"}])
    message = import_error(path)
    assert "Can't tell the format of x.json: its first row has 'question', 'reply'" in message
    for name in FORMATS:
        assert f"{name} (" in message
    assert "--format NAME" in message and "--column prompt=KEY" in message
    result = parse_file(path, column_map={"prompt": "question", "response": "reply"})
    assert result.rows[0].conversation == [user("Q"), assistant("A")]


def test_not_json_at_all(tmp_path):
    message = import_error(write(tmp_path / "notes.json", "hello there"))
    assert "does not start with '[' or '{', so it is not JSON (it starts with `hello there`)" in message


def test_forced_format(tmp_path):
    path = write_json(tmp_path / "s.json", [{"conversations": [{"from": "human", "value": "Q"},
                                                               {"from": "gpt", "value": "A"}]}])
    message = import_error(path, format="alpaca")
    assert 'field "instruction" is missing' in message
    assert "These rows look like sharegpt, not alpaca: leave the format out, or use --format sharegpt." in message
    assert parse_file(path, format="sharegpt").format == "sharegpt"
    assert "Unknown format 'yaml'. Known formats: alpaca (" in import_error(path, format="yaml")
    assert "A column map only applies to csv, xlsx and pairs" in import_error(
        path, format="alpaca", column_map={"prompt": "x"})


def test_missing_file_and_folder(tmp_path):
    assert "does not exist" in import_error(tmp_path / "nope.json")
    assert "is a folder" in import_error(tmp_path)


def test_unicode_line_separators_inside_jsonl_strings(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [user("a\u2028b"), assistant("c\u2029d")]}])
    assert parse_file(path).rows[0].conversation == [user("a\u2028b"), assistant("c\u2029d")]


def test_formats_package_imports_neither_discord_nor_torch():
    code = ("import sys, storage.formats; bad = [m for m in ('discord', 'torch', 'transformers') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
