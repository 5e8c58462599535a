"""`guildtune train`, `ask`, `demo`, `estimate`, `up` as a user runs them (tiny model, CPU)."""
import pytest
from typer.testing import CliRunner

from guildtune.cli import app
from guildtune.demo import community_facts


@pytest.fixture
def run(tmp_path, monkeypatch, tiny_model_dir):
    for key, value in {"GUILDTUNE_DATA_DIR": tmp_path / "data", "GUILDTUNE_BASE_MODEL": tiny_model_dir,
                       "GUILDTUNE_DEVICE": "cpu", "GUILDTUNE_TRAIN_MAX_STEPS": 3}.items():
        monkeypatch.setenv(key, str(value))
    for key in ("GUILDTUNE_DB", "DISCORD_TOKEN", "GUILDTUNE_MODELS_DIR", "GUILDTUNE_SERVER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_every_command_has_help(run):
    for cmd in (["--help"], ["up", "--help"], ["bot", "--help"], ["trainer", "--help"], ["train", "--help"],
                ["ask", "--help"], ["demo", "--help"], ["estimate", "--help"], ["dataset", "import", "--help"],
                ["dataset", "export", "--help"], ["dataset", "stats", "--help"]):
        result = run(*cmd)
        assert result.exit_code == 0 and "Usage" in result.output, cmd


def test_train_then_ask_from_the_terminal(run, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join('{"messages": [{"role": "user", "content": "q%d"}, '
                               '{"role": "assistant", "content": "a%d"}]}' % (i, i) for i in range(6)))
    assert run("dataset", "import", "--guild", 3, "--approve", facts).exit_code == 0
    ask_base = run("ask", "--guild", 3, "hello")
    assert ask_base.exit_code == 0 and "base model" in ask_base.output
    trained = run("train", "--guild", 3)
    assert trained.exit_code == 0, trained.output
    assert "v1 is active for guild 3" in trained.output and "train_s" in trained.output
    ask_v1 = run("ask", "--guild", 3, "hello")
    assert ask_v1.exit_code == 0 and "v1" in ask_v1.output
    missing = run("ask", "--guild", 3, "--version", 7, "hello")
    assert missing.exit_code == 1 and "no servable version v7 (available: v1)" in missing.output
    nothing = run("train", "--guild", 99)
    assert nothing.exit_code == 1 and "needs at least 2 approved examples" in nothing.output


def test_demo_runs_the_whole_loop(run, tmp_path):
    result = run("demo", "--data-dir", tmp_path / "demo", "--steps", 3)
    assert result.exit_code == 0, result.output
    assert "Taught 20 community facts" in result.output and "v1 is active" in result.output
    assert "Before and after training" in result.output and "knows it" in result.output
    assert community_facts()[0]["question"].split()[0] in result.output


def test_estimate_prints_the_table(run, tiny_model_dir):
    result = run("estimate", tiny_model_dir, "--method", "qlora", "--seq-len", 256, "--batch", 2)
    assert result.exit_code == 0 and "total" in result.output.lower()
    assert run("estimate", tiny_model_dir, "--method", "half").exit_code == 2


def test_up_without_token_explains_how_to_get_one(run):
    result = run("up")
    assert result.exit_code == 2
    assert "DISCORD_TOKEN is not set" in result.output and "MESSAGE CONTENT INTENT" in result.output
    assert "guildtune demo" in result.output
