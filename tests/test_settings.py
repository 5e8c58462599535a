"""Settings: defaults that run with only a token, and bad values named with what is allowed."""
import pytest

from guildtune.settings import EMBEDDED_BASE_MODEL, SettingsError, load_settings
from storage.guild_settings import SettingError, parse_setting


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os
    for key in list(os.environ):
        if key.startswith("GUILDTUNE_") or key in ("DISCORD_TOKEN", "OLLAMA_HOST"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults():
    s = load_settings()
    assert s.server == "local" and s.base_model == EMBEDDED_BASE_MODEL
    assert str(s.db_path) == "data/guildtune.db"
    assert s.discord_token is None


def test_dotenv_and_env(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("GUILDTUNE_SERVER=ollama\nOLLAMA_HOST=box:11434\nGUILDTUNE_DB=\n")
    s = load_settings()
    assert s.server == "ollama" and s.ollama_host == "http://box:11434"
    assert str(s.db_path) == "data/guildtune.db"  # empty means default
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "d"))
    assert load_settings().db_path == tmp_path / "d" / "guildtune.db"


def test_bad_values_name_variable_value_and_allowed(monkeypatch):
    monkeypatch.setenv("GUILDTUNE_SERVER", "triton")
    monkeypatch.setenv("GUILDTUNE_ASK_CONCURRENCY", "0")
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "GUILDTUNE_SERVER='triton'" in text and "'local', 'ollama' or 'vllm'" in text
    assert "GUILDTUNE_ASK_CONCURRENCY='0'" in text and "greater than or equal to 1" in text


def test_token_is_never_echoed(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "MTIz.secret.token")
    s = load_settings()
    assert "secret" not in repr(s) and "secret" not in str(s.discord_token)
    assert s.discord_token.get_secret_value() == "MTIz.secret.token"


@pytest.mark.parametrize("name, raw, value", [
    ("temperature", "0.2", 0.2), ("auto_approve_moderators", "no", False), ("schedule", "daily:03:30", "daily:03:30"),
    ("moderator_role_ids", "12, 34", [12, 34]), ("review_channel_id", "99", 99), ("review_channel_id", "off", None),
])
def test_guild_setting_parsing(name, raw, value):
    assert parse_setting(name, raw) == value


@pytest.mark.parametrize("name, raw, fragment", [
    ("temperature", "hot", "expected float"), ("temperature", "5", "from 0.0 to 2.0"),
    ("schedule", "weekly", "interval:<N>h"), ("colour", "red", "Unknown setting"),
])
def test_guild_setting_errors(name, raw, fragment):
    with pytest.raises(SettingError, match=fragment.replace("(", r"\(")):
        parse_setting(name, raw)


def test_env_example_lists_every_setting_with_an_explanation():
    from pathlib import Path

    from guildtune.settings import Settings

    lines = (Path(__file__).resolve().parents[1] / ".env.example").read_text(encoding="utf-8").splitlines()
    for name, field in Settings.model_fields.items():
        [i] = [n for n, line in enumerate(lines) if line.startswith(f"{field.alias}=")]
        assert lines[i - 1].startswith("# "), f"{field.alias} has no explanation line above it"
