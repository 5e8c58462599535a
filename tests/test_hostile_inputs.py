"""Hostile input, answered: each generated class gets its exit code, a message that names the problem, no
traceback, and nothing half-written in the database. The files come from tests/hostile_files.py, sized so
that the quadratic or unbounded work these once caused would trip the hang guard; bench/hostile_inputs.py
runs the same classes at the size limits and reports the times.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import discord
import pytest
from typer.testing import CliRunner

from guildtune.cli import app
from guildtune.runtime import setup_logging
from guildtune.settings import Settings
from storage.db import Database
from storage.limits import MAX_DISCORD_ID
from tests.hostile_files import CASES, INVISIBLE, Case

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 60  # a hang guard, not a speed claim: the bench measures the times


def plain(text: str) -> str:
    """Output with rich's panel borders and line wrapping taken out, so phrases can be looked for."""
    for border in "│╭╮╰╯─":
        text = text.replace(border, " ")
    return " ".join(text.split())


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GUILDTUNE_") or name in ("DISCORD_TOKEN", "OLLAMA_HOST"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    return invoke


def assert_answered(result, exit_code: int, *says: str) -> None:
    output = plain(result.output)
    assert result.exit_code == exit_code, result.output[-3000:]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for words in says:
        assert plain(words) in output, f"{words!r} not in: {output[-3000:]}"


def examples_in(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM examples").fetchone()[0]


# ------------------------------------------------------------------------------------------ import files
@pytest.mark.timeout(HANG_GUARD_S)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_hostile_file_gets_its_answer_and_nothing_half_written(case: Case, cli, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    path = case.write(folder, case.small)
    result = cli("dataset", "import", "--guild", "1", path)
    assert_answered(result, case.exit_code, *case.says)
    stored = examples_in(tmp_path / "data" / "guildtune.db")
    if case.exit_code:
        assert stored == 0 and "Nothing was imported" in plain(result.output)
    else:
        assert stored >= 1


def test_unbalanced_quote_from_the_report_names_its_line_and_imports_nothing(cli, tmp_path):
    (tmp_path / "faq.csv").write_text('prompt,response\nq1,"a1\nq2,a2\nq3,a3\n', encoding="utf-8")
    result = cli("dataset", "import", "--guild", "1", tmp_path / "faq.csv")
    assert_answered(result, 1, "faq.csv line 2: a quote (\") opens a cell here and is never closed")
    assert examples_in(tmp_path / "data" / "guildtune.db") == 0
    # quotes used the way CSV means them still import
    (tmp_path / "ok.csv").write_text('prompt,response\nq1,"a1, with a comma\nand a second line"\n'
                                     'q2,say ""hi"" then\n"q3",a "3"\n', encoding="utf-8")
    assert_answered(cli("dataset", "import", "--guild", "1", tmp_path / "ok.csv"), 0, "Imported 3 example(s)")


def test_invisible_only_content_is_empty_in_every_format(cli, tmp_path):
    rows = {"a.jsonl": '{"instruction": "%s", "output": "fine"}\n' % INVISIBLE,
            "b.json": '[{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "%s"}]}]'
                      % INVISIBLE,
            "c.txt": f"### Human: q\n### Assistant: {INVISIBLE}\n",
            "d.csv": f"prompt,response,system\nq,a,{INVISIBLE}\n"}
    for name, text in rows.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        result = cli("dataset", "import", "--guild", "1", tmp_path / name)
        if name == "d.csv":  # an invisible system prompt is an absent one: the row imports without it
            assert_answered(result, 0, "Imported 1 example(s)")
        else:
            assert_answered(result, 1, "invisible characters", "Nothing was imported")
    with sqlite3.connect(tmp_path / "data" / "guildtune.db") as conn:
        assert [r[0] for r in conn.execute("SELECT messages FROM examples")] == [
            '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]']


def test_a_file_name_too_long_is_a_usage_error(cli, tmp_path):
    result = cli("dataset", "import", "--guild", "1", tmp_path / ("x" * 300 + ".json"))
    assert_answered(result, 2, "cannot be opened (File name too long)")
    assert_answered(cli("dataset", "import", "--guild", "1", "/dev/zero"), 2, "not a regular file")


def test_export_to_a_place_that_cannot_be_written_says_so(cli, tmp_path):
    assert_answered(cli("dataset", "export", "--guild", "1", "-o", tmp_path), 1, "cannot be written")
    assert_answered(cli("dataset", "export", "--guild", "1", "-o", tmp_path / ("y" * 300)), 1,
                    "cannot be written (File name too long)")


# ------------------------------------------------------------------------------------------ --guild
GUILD_COMMANDS = [("dataset", "import", "rows.json"), ("dataset", "export"), ("dataset", "stats"), ("train",),
                  ("ask", "hello?")]


@pytest.mark.parametrize("guild", ["0", "-1", str(MAX_DISCORD_ID + 1), "9" * 30])
@pytest.mark.parametrize("command", GUILD_COMMANDS, ids=" ".join)
def test_a_guild_outside_discord_ids_is_refused_by_every_command(command, guild, cli, tmp_path):
    result = cli(*command, f"--guild={guild}")
    assert_answered(result, 2, f"{guild} is not a Discord server id", f"from 1 to {MAX_DISCORD_ID}")
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_the_largest_guild_id_works(cli, tmp_path):
    (tmp_path / "rows.json").write_text('[{"instruction": "q", "output": "a"}]', encoding="utf-8")
    assert_answered(cli("dataset", "import", f"--guild={MAX_DISCORD_ID}", "rows.json"), 0, "Imported 1")
    assert_answered(cli("dataset", "stats", f"--guild={MAX_DISCORD_ID}"), 0, "total 1")


# ------------------------------------------------------------------------------------------ database path
def _junk(tmp_path: Path) -> Path:
    path = tmp_path / "junk.db"
    path.write_text("junk\n")
    return path


DB_PATHS = [
    ("a folder", lambda tmp: tmp, "is a folder"),
    ("/dev/null", lambda tmp: Path("/dev/null"), "not a regular file"),
    ("not SQLite", _junk, "is not a SQLite database"),
    ("under /proc", lambda tmp: Path("/proc/guildtune-test/guildtune.db"), "cannot be created"),
    ("under /dev/null", lambda tmp: Path("/dev/null/guildtune.db"), "cannot be used (Not a directory)"),
]


@pytest.mark.parametrize("name,where,says", DB_PATHS, ids=[d[0] for d in DB_PATHS])
def test_an_unusable_database_path_is_named_with_exit_2(name, where, says, cli, tmp_path):
    db = where(tmp_path)
    (tmp_path / "rows.json").write_text('[{"instruction": "q", "output": "a"}]', encoding="utf-8")
    for command in (("dataset", "stats", "-g", "1"), ("dataset", "import", "-g", "1", "rows.json")):
        assert_answered(cli(*command, env={"GUILDTUNE_DB": str(db)}), 2, says, "GUILDTUNE_DB")
    if name == "not SQLite":
        assert db.read_text() == "junk\n"  # left as it was


def test_data_dir_under_dev_null_is_named(cli):
    assert_answered(cli("dataset", "stats", "-g", "1", env={"GUILDTUNE_DATA_DIR": "/dev/null/data"}), 2,
                    "/dev/null/data/guildtune.db", "Not a directory")


@pytest.mark.timeout(HANG_GUARD_S)
def test_a_database_that_is_not_sqlite_does_not_hang_the_process(tmp_path):
    """It used to print a traceback and never exit (the SQLite thread was left running)."""
    junk = _junk(tmp_path)
    env = {**os.environ, "GUILDTUNE_DB": str(junk), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "guildtune", "dataset", "stats", "--guild", "1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=HANG_GUARD_S - 10)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a SQLite database" in plain(done.stderr) and junk.read_text() == "junk\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_database_is_named(cli, tmp_path):
    db = tmp_path / "ro.db"
    assert_answered(cli("dataset", "stats", "-g", "1", env={"GUILDTUNE_DB": str(db)}), 0)
    db.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        result = cli("dataset", "import", "-g", "1", REPO / "tests" / "hostile_files.py", env={"GUILDTUNE_DB": str(db)})
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
        assert "read-only" in plain(result.output) or "cannot be" in plain(result.output)
    finally:
        tmp_path.chmod(0o755)


async def test_database_open_refusal_leaves_no_thread_running(tmp_path):
    import threading

    from storage.db import DatabaseOpenError

    before = threading.active_count()
    with pytest.raises(DatabaseOpenError, match="not a SQLite database"):
        await Database.open(_junk(tmp_path))
    (tmp_path / "short.db").write_bytes(b"SQLite")  # a header prefix: SQLite itself must refuse it
    with pytest.raises(DatabaseOpenError, match="not a SQLite database, or it is damaged"):
        await Database.open(tmp_path / "short.db")
    for _ in range(50):  # the SQLite thread of the refused open ends on its own, just after the answer
        if threading.active_count() == before:
            break
        await asyncio.sleep(0.05)
    assert threading.active_count() == before


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("variable,value,says", [
    ("OLLAMA_HOST", "http://[::1", "OLLAMA_HOST='http://[::1' is not valid"),
    ("OLLAMA_HOST", "http://:11434", "has no host name"),
    ("GUILDTUNE_DEV_GUILD", "0", "GUILDTUNE_DEV_GUILD='0' is not valid"),
    ("GUILDTUNE_DEV_GUILD", str(2**64), "GUILDTUNE_DEV_GUILD"),
    ("GUILDTUNE_LOG_SQL", "sometimes", "GUILDTUNE_LOG_SQL"),
])
def test_bad_settings_are_named_with_exit_2(variable, value, says, cli):
    assert_answered(cli("dataset", "stats", "-g", "1", env={variable: value}), 2, says, "Invalid settings")


def test_a_dot_env_that_is_not_utf8_is_named(cli, tmp_path):
    (tmp_path / ".env").write_bytes("GUILDTUNE_LOG_LEVEL=DEBUG\n# café\n".encode("cp1252"))
    assert_answered(cli("dataset", "stats", "-g", "1"), 2, ".env is not UTF-8 text", "byte 0xE9", "iconv")


# ------------------------------------------------------------------------------------------ logs, network
async def test_debug_logging_keeps_sql_and_its_parameters_out_unless_asked(tmp_path, caplog):
    secret_text = "my private question 7c1e"
    sql_logger = logging.getLogger("aiosqlite")
    level = sql_logger.level
    try:
        for log_sql, expected in ((False, False), (True, True)):
            caplog.clear()
            setup_logging(Settings(_env_file=None, log_level="DEBUG", log_sql=log_sql))
            caplog.set_level(logging.DEBUG)
            db = await Database.open(tmp_path / f"g{log_sql}.db")
            await db.examples.add(1, [{"role": "user", "content": secret_text}, {"role": "assistant", "content": "a"}],
                                  source="teach", author_id=42)
            await db.close()
            assert (secret_text in caplog.text) is expected
            assert any(r.name == "aiosqlite" for r in caplog.records) is expected
    finally:
        sql_logger.setLevel(level)


@pytest.mark.timeout(HANG_GUARD_S)
@pytest.mark.parametrize("command", ["bot", "up"])
def test_without_network_the_bot_says_discord_cannot_be_reached(command, cli, monkeypatch, tmp_path):
    token = "MTIz.secret-token-for-this-test"
    monkeypatch.setattr(discord.http.Route, "BASE", "http://127.0.0.1:9/api/v10")  # nothing listens there
    result = cli(command, env={"DISCORD_TOKEN": token, "GUILDTUNE_SERVER": "ollama",
                               "OLLAMA_HOST": "http://127.0.0.1:9", "GUILDTUNE_TRAINER_POLL": "0.1"})
    assert_answered(result, 1, "Discord cannot be reached", "Check this machine's network connection")
    assert token not in result.output


# ------------------------------------------------------------------------------------------ install
def test_no_file_names_a_package_registry_and_torch_keeps_pips_index():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".jpg", ".xlsx", ".gguf"):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "pypi" + ".org" not in text and "pythonhosted" + ".org" not in text, name
    script = (REPO / "scripts" / "install_torch.sh").read_text()
    assert "--index-url" not in script  # pip's configured index stays the index
    assert script.count("--extra-index-url") == 1 and script.count("https://") == 1  # only PyTorch's CPU wheels
