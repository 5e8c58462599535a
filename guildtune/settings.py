"""Settings from the environment and `.env`. Everything but DISCORD_TOKEN has a working default.

A bad value stops the program at start with the variable's name, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.limits import MAX_DISCORD_ID, MIN_DISCORD_ID
from trainer.config import TrainConfig
from trainer.launch import SECRET_VARIABLES

EMBEDDED_BASE_MODEL = "embedded:gemma-3-270m"
ENV_FILE = ".env"


class SettingsError(Exception):
    """Raised with a message that names each bad variable, its value and what is allowed."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True)

    discord_token: SecretStr | None = Field(None, alias="DISCORD_TOKEN")
    data_dir: Path = Field(Path("./data"), alias="GUILDTUNE_DATA_DIR")
    db: str | None = Field(None, alias="GUILDTUNE_DB")  # a SQLite path, sqlite:///… or postgresql://…
    models_dir_setting: Path | None = Field(None, alias="GUILDTUNE_MODELS_DIR")
    server: Literal["local", "ollama", "vllm"] = Field("local", alias="GUILDTUNE_SERVER")
    ollama_host: str = Field("http://127.0.0.1:11434", alias="OLLAMA_HOST")
    ollama_base_tag: str = Field("gemma3:270m", alias="GUILDTUNE_OLLAMA_BASE")
    ollama_quantize: str | None = Field(None, alias="GUILDTUNE_OLLAMA_QUANTIZE")
    vllm_base_url: str = Field("http://127.0.0.1:8000", alias="VLLM_BASE_URL",
                               description="vLLM's OpenAI-compatible server (GUILDTUNE_SERVER=vllm)")
    vllm_api_key: SecretStr | None = Field(None, alias="VLLM_API_KEY",
                                           description="the --api-key vLLM was started with, if any")
    vllm_adapter_dir: Path | None = Field(None, alias="GUILDTUNE_VLLM_ADAPTER_DIR",
                                          description="folder shared with the vLLM host where adapters are copied")
    vllm_server_adapter_dir: str | None = Field(None, alias="GUILDTUNE_VLLM_SERVER_ADAPTER_DIR",
                                                description="that folder's path as the vLLM host sees it")
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
    train_config: dict[str, Any] = Field(default_factory=dict, alias="GUILDTUNE_TRAIN_CONFIG")
    gate_tolerance: float = Field(0.05, alias="GUILDTUNE_GATE_TOLERANCE", ge=0, le=1)
    gate_max_drift: float = Field(0.10, alias="GUILDTUNE_GATE_MAX_DRIFT", ge=0, le=100)
    gate_sample: int = Field(48, alias="GUILDTUNE_GATE_SAMPLE", ge=0, le=10_000)
    train_compile: Literal["auto", "on", "off"] = Field("auto", alias="GUILDTUNE_TRAIN_COMPILE")
    report_to: Literal["none", "tensorboard", "wandb"] = Field("none", alias="GUILDTUNE_REPORT_TO")
    qlora: Literal["auto", "on", "off"] = Field("auto", alias="GUILDTUNE_QLORA")
    memory_cap_gib: float | None = Field(None, alias="GUILDTUNE_MEMORY_CAP_GIB", gt=0)
    #: "auto" (every visible GPU; 1 process without CUDA) or a number of training processes (trainer/launch.py)
    train_gpus: str = Field("auto", alias="GUILDTUNE_TRAIN_GPUS")
    dev_guild_id: int | None = Field(None, alias="GUILDTUNE_DEV_GUILD", ge=MIN_DISCORD_ID, le=MAX_DISCORD_ID)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="GUILDTUNE_LOG_LEVEL")
    log_sql: bool = Field(False, alias="GUILDTUNE_LOG_SQL")

    @field_validator("vllm_base_url")
    @classmethod
    def _vllm_url_has_scheme(cls, value: str) -> str:
        return (value if value.startswith(("http://", "https://")) else "http://" + value).rstrip("/")

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
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (parses the port: raises on "http://h:x" or "http://[::1")
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc}); write it like http://127.0.0.1:11434") from None
        if not parts.hostname:
            raise ValueError("has no host name; write it like http://127.0.0.1:11434")
        return value.rstrip("/")

    @field_validator("train_config")
    @classmethod
    def _known_train_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            TrainConfig(**value)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            raise ValueError(f"{exc}; known fields: {known}") from None
        return value

    @field_validator("train_gpus")
    @classmethod
    def _gpus_auto_or_count(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 1024):
            raise ValueError("use auto (every visible GPU) or a number of GPUs from 1 to 1024")
        return value if value == "auto" else str(int(value))

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
    shown = "<hidden>" if alias in SECRET_VARIABLES else repr(value)
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
    except UnicodeDecodeError as exc:  # only the .env file is decoded here; the environment is text already
        raise SettingsError(f"{ENV_FILE} is not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at byte offset "
                            f"{exc.start}). Re-save it as UTF-8, or convert it: "
                            f"`iconv -f cp1252 -t utf-8 {ENV_FILE} > {ENV_FILE}.utf8 && mv {ENV_FILE}.utf8 {ENV_FILE}`.") from None
    except OSError as exc:
        raise SettingsError(f"{ENV_FILE} cannot be read ({exc.strerror or exc}).") from None
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise SettingsError("Invalid settings:\n  " + "\n  ".join(lines) +
                            "\nFix them in your environment or .env (see .env.example).") from None
