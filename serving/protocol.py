"""The one interface the bot and the trainer use to reach a model, whatever serves it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, runtime_checkable

from storage.records import ModelVersion


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling knobs a guild can set with `/config set` (temperature 0 means greedy)."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    max_tokens: int = 512
    timeout_s: float = 60.0
    seed: int | None = None


@dataclass(frozen=True)
class ServerHealth:
    ok: bool
    detail: str
    loaded: list[str] = field(default_factory=list)


class ModelServerError(Exception):
    """A failure whose message is safe and useful to show a Discord user or an admin."""


class ModelServerUnavailable(ModelServerError):
    """The server cannot be reached or did not answer within the timeout."""


@runtime_checkable
class ModelServer(Protocol):
    """`version=None` everywhere means the guild has no trained version yet: use the base model."""

    def chat(
        self, version: ModelVersion | None, messages: list[dict[str, str]], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Stream the assistant's reply as text pieces."""
        ...

    async def publish(self, version: ModelVersion) -> str:
        """Make a trained adapter servable; returns the serving tag. Raises ModelServerError."""
        ...

    async def preload(self, version: ModelVersion | None) -> None:
        """Load the version so the first answer after the swap is not slow."""
        ...

    async def remove(self, version: ModelVersion) -> None:
        """Forget a version that is no longer kept for rollback."""
        ...

    async def health(self) -> ServerHealth: ...

    async def close(self) -> None: ...
