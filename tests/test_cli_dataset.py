"""`guildtune dataset import/export/stats` as a user runs them, on the real demo data sets."""
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guildtune.cli import app

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets not present")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])
    return invoke


@needs_datasets
def test_import_stats_export_roundtrip(run, tmp_path):
    r = run("dataset", "import", "--guild", 7, "--approve", DATASETS / "identity.json")
    assert r.exit_code == 0, r.output
    assert "91 conversation(s) read as alpaca" in r.output and "Imported 91 example(s) as approved" in r.output
    r = run("dataset", "import", "--guild", 8, DATASETS / "alpaca_zh_demo.json")
    assert r.exit_code == 0 and "as pending into guild 8" in r.output
    created, dups = map(int, re.search(r"Imported (\d+) example\(s\).*; (\d+) duplicate", r.output).groups())
    assert created + dups == 1000 and dups < 20  # the file repeats a few of its own rows
    stats = run("dataset", "stats", "--guild", 7)
    assert stats.exit_code == 0 and "approved" in stats.output and "91" in stats.output
    out = tmp_path / "identity.jsonl"
    r = run("dataset", "export", "--guild", 7, "-o", out)
    assert r.exit_code == 0 and "Wrote 91 approved example(s)" in r.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 91 and lines[0]["messages"][0]["role"] == "user"
    # guild 8's examples are pending: an approved-only export of guild 8 is empty, and nothing leaks into 7
    assert run("dataset", "export", "--guild", 8).output == ""
    assert len(run("dataset", "export", "--guild", 8, "--status", "pending").output.splitlines()) == created
    # re-importing the export into another guild gives identical conversations
    r = run("dataset", "import", "--guild", 9, "--approve", out)
    assert r.exit_code == 0 and "read as messages" in r.output
    again = run("dataset", "export", "--guild", 9).output.splitlines()
    assert [json.loads(x) for x in again] == lines


@needs_datasets
def test_tool_rows_are_counted_not_imported(run):
    r = run("dataset", "import", "--guild", 1, DATASETS / "glaive_toolcall_en_demo.json")
    assert r.exit_code == 0
    assert "Skipped 191 row(s): a tool-calling row" in r.output


def test_mojibake_file_is_named_and_nothing_written(run, tmp_path):
    bad = tmp_path / "faq.csv"
    bad.write_bytes("prompt,response\nCafé hours?,Open at 9\n".encode("cp1252"))
    r = run("dataset", "import", "--guild", 1, bad)
    assert r.exit_code == 1
    assert "not UTF-8" in r.output and "iconv -f cp1252 -t utf-8" in r.output and "Nothing was imported" in r.output
    assert run("dataset", "export", "--guild", 1, "--status", "all").output == ""


def test_invalid_rows_all_or_nothing_then_skip_invalid(run, tmp_path):
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": ""},
            {"instruction": "q3", "output": "a3"}]
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps(rows), encoding="utf-8")
    r = run("dataset", "import", "--guild", 2, f)
    assert r.exit_code == 1 and "output" in r.output and "Nothing was imported" in r.output
    assert run("dataset", "export", "--guild", 2, "--status", "all").output == ""
    r = run("dataset", "import", "--guild", 2, "--skip-invalid", f)
    assert r.exit_code == 0 and "Imported 2 example(s)" in r.output and "Skipped 1 invalid row(s)" in r.output


def test_usage_errors_exit_2(run, tmp_path):
    assert run("dataset", "import", "--guild", 1, tmp_path / "missing.json").exit_code == 2
    assert run("dataset", "export", "--guild", 1, "--format", "csv").exit_code == 2
    assert run("dataset", "stats").exit_code == 2
    assert run("dataset", "import", "--guild", 1, "--format", "yaml", tmp_path).exit_code == 2
