"""Settings from the environment and `.env`. Everything but DISCORD_TOKEN has a working default.

A bad value stops the program at start with the variable's name, the value and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BASE_MODEL = "embedded:gemma-3-270m"


class SettingsError(Exception):
    """Raised with a message that names each bad variable, its value and what is allowed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True)

    discord_token: SecretStr | None = Field(None, alias="DISCORD_TOKEN")
    data_dir: Path = Field(Path("./data"), alias="GUILDTUNE_DATA_DIR")
    db: str | None = Field(None, alias="GUILDTUNE_DB")  # a SQLite path, sqlite:///… or postgresql://…
    models_dir_setting: Path | None = Field(None, alias="GUILDTUNE_MODELS_DIR")
    server: Literal["local", "ollama"] = Field("local", alias="GUILDTUNE_SERVER")
    ollama_host: str = Field("http://127.0.0.1:11434", alias="OLLAMA_HOST")
    ollama_base_tag: str = Field("gemma3:270m", alias="GUILDTUNE_OLLAMA_BASE")
    ollama_quantize: str | None = Field(None, alias="GUILDTUNE_OLLAMA_QUANTIZE")
    base_model: str = Field(EMBEDDED_BASE_MODEL, alias="GUILDTUNE_BASE_MODEL")
    tag_prefix: str = Field("guildtune", alias="GUILDTUNE_TAG_PREFIX", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    keep_versions: int = Field(3, alias="GUILDTUNE_KEEP_VERSIONS", ge=1, le=50)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", alias="GUILDTUNE_DEVICE")
    answer_timeout_s: float = Field(60.0, alias="GUILDTUNE_ANSWER_TIMEOUT", gt=0, le=600)
    ask_cooldown_s: float = Field(10.0, alias="GUILDTUNE_ASK_COOLDOWN", ge=0, le=3600)
    ask_concurrency: int = Field(2, alias="GUILDTUNE_ASK_CONCURRENCY", ge=1, le=64)
    trainer_poll_s: float = Field(15.0, alias="GUILDTUNE_TRAINER_POLL", gt=0, le=3600)
    version_poll_s: float = Field(3.0, alias="GUILDTUNE_VERSION_POLL", gt=0, le=600)
    train_max_steps: int | None = Field(None, alias="GUILDTUNE_TRAIN_MAX_STEPS", ge=1)
    gate_tolerance: float = Field(0.02, alias="GUILDTUNE_GATE_TOLERANCE", ge=0, le=1)
    train_compile: Literal["auto", "on", "off"] = Field("auto", alias="GUILDTUNE_TRAIN_COMPILE")
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", alias="GUILDTUNE_REPORT_TO")
    qlora: Literal["auto", "on", "off"] = Field("auto", alias="GUILDTUNE_QLORA")
    memory_cap_gib: float | None = Field(None, alias="GUILDTUNE_MEMORY_CAP_GIB", gt=0)
    dev_guild_id: int | None = Field(None, alias="GUILDTUNE_DEV_GUILD")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="GUILDTUNE_LOG_LEVEL")

    @field_validator("db", mode="before")
    @classmethod
    def _db_is_known(cls, value: object) -> object:
        if value is None:
            return None
        from storage.engine_target import parse_target

        parse_target(str(value))  # a ValueError naming the forms allowed
        return str(value)

    @field_validator("ollama_host")
    @classmethod
    def _host_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            value = "http://" + value
        return value.rstrip("/")

    def child_env(self) -> dict[str, str]:
        """These settings as environment variables for a child process (the training job),
        so it sees exactly what its parent sees. The Discord token is left out: a job needs none."""
        env = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name == "discord_token" or value is None:
                continue
            env[field.alias] = str(value)
        env["GUILDTUNE_DB"] = str(self.db_path)
        return env

    @property
    def db_path(self) -> Path | str:
        """What `Database.open` takes: a SQLite file path, or GUILDTUNE_DB's URL as given."""
        if self.db is None:
            return self.data_dir / "guildtune.db"
        return self.db if "://" in self.db else Path(self.db)

    @property
    def models_dir(self) -> Path:
        return self.models_dir_setting if self.models_dir_setting is not None else self.data_dir / "models"

    @property
    def versions_dir(self) -> Path:
        return self.data_dir / "versions"


def _describe(error: dict) -> str:
    field = error["loc"][0] if error["loc"] else "?"
    alias = Settings.model_fields[field].alias if field in Settings.model_fields else field
    value = error.get("input")
    shown = "<hidden>" if alias == "DISCORD_TOKEN" else repr(value)
    if alias == "GUILDTUNE_DB" and isinstance(value, str):
        from storage.engine_target import redact

        shown = repr(redact(value))  # a database password stays out of the message
    allowed = error["msg"]
    if error["type"] == "literal_error":
        allowed = "allowed: " + error["ctx"]["expected"]
    return f"{alias}={shown} is not valid ({allowed})"


def load_settings(**overrides) -> Settings:
    """Read the environment/.env; on a bad value raise SettingsError naming every bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise SettingsError("Invalid settings:\n  " + "\n  ".join(lines) +
                            "\nFix them in your environment or .env (see .env.example).") from None
