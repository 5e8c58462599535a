"""Typed rows. Conversations are lists of `{"role": ..., "content": ...}` chat messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from storage.ownership import Owner

Role = Literal["system", "user", "assistant"]
Conversation = list[dict[str, str]]

EXAMPLE_SOURCES = ("teach", "reaction", "context_menu", "correction", "import")
EXAMPLE_STATUSES = ("pending", "approved", "rejected", "deleted")
#: Labels of preference examples (votes under /ask answers); demonstrations have none.
PREFERENCE_LABELS = ("desirable", "undesirable")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "gated", "cancelled")
VERSION_STATUSES = ("ready", "active", "retired", "removed")


@dataclass(frozen=True)
class Example:
    id: int
    guild_id: int
    messages: Conversation
    source: str
    source_message_ids: list[int]
    author_id: int | None
    status: str
    content_hash: str
    created_at: float
    updated_at: float
    answer_id: int | None = None
    source_channel_id: int | None = None
    #: 'desirable' / 'undesirable' for a preference example made from votes (source 'vote'); None otherwise
    label: str | None = None

    @property
    def is_preference(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class ExampleEvent:
    id: int
    guild_id: int
    example_id: int
    actor_id: int | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None
    created_at: float


@dataclass(frozen=True)
class Answer:
    id: int
    guild_id: int
    channel_id: int | None
    user_id: int | None
    question: str
    answer: str
    version_id: int | None
    latency_ms: int
    created_at: float


@dataclass(frozen=True)
class Feedback:
    id: int
    guild_id: int
    answer_id: int
    user_id: int
    kind: str  # up | down | correction
    example_id: int | None
    created_at: float


@dataclass(frozen=True)
class TrainingRun:
    id: int
    guild_id: int
    status: str
    trigger: str  # schedule | min_examples | retrain | cli | demo
    requested_by: int | None
    n_train: int
    n_eval: int
    step: int
    total_steps: int
    loss: float | None
    eta_s: float | None
    eval_loss: float | None
    baseline_eval_loss: float | None
    metrics: dict[str, Any]
    error: str | None
    gate_reason: str | None
    cancel_requested: bool
    pid: int | None
    loss_history: list[list[float]]
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress_message_id: int | None = None
    owner: "Owner | None" = None  # the process that claimed the run (None: not claimed yet)
    pid_started: float | None = None  # start time of the job process `pid`


@dataclass(frozen=True)
class ModelVersion:
    id: int
    guild_id: int
    number: int
    run_id: int | None
    tag: str | None
    adapter_path: str
    base_model: str
    metrics: dict[str, Any]
    status: str
    n_examples: int
    created_at: float
    activated_at: float | None = None


@dataclass(frozen=True)
class GuildSettings:
    """Per-guild configuration a moderator changes with `/config set`."""

    guild_id: int
    moderator_role_ids: list[int] = field(default_factory=list)
    review_channel_id: int | None = None
    reaction_emoji: str = "📚"
    auto_approve_moderators: bool = True
    moderator_upvote_approves: bool = False
    schedule: str = "interval:24h"  # "off" | "interval:<N>h|m" | "daily:HH:MM" (UTC)
    min_new_examples: int = 10
    system_prompt: str = "You are the helpful assistant of this Discord community."
    temperature: float = 0.7
    top_k: int = 40
    max_tokens: int = 512
    max_turns: int = 6
    golden_questions: list[dict[str, str]] = field(default_factory=list)
    # votes under /ask answers → preference examples (issue 15): net 👍 (or 👎) needed, a moderator's weight
    preference_up_votes: int = 2
    preference_down_votes: int = 2
    moderator_vote_weight: int = 1
