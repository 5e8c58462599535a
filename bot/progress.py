"""The training progress message: what a guild sees in its review channel while a run trains.

The trainer is another process and writes progress into `training_runs`; `ProgressReporter`
polls those rows, posts one message per run when it starts, edits it with a progress bar (at
most every `min_edit_interval_s`), and at the end shows the eval result, the gate's decision and
a PNG loss curve. The text and the picture are plain functions so they are easy to test.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import TYPE_CHECKING

import discord
import matplotlib

matplotlib.use("Agg")  # no display: render to memory only
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bot.formatting import NO_MENTIONS, format_duration, learning_scores, progress_bar  # noqa: E402
from storage.records import ModelVersion, TrainingRun  # noqa: E402
from storage.runs import FINAL  # noqa: E402

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1500
LOSS_CURVE_FILENAME = "loss_curve.png"


def estimate_eta(run: TrainingRun, now: float | None = None) -> float | None:
    """The trainer's own ETA when it wrote one; otherwise elapsed time per step times steps left."""
    if run.eta_s is not None:
        return run.eta_s
    if run.started_at is None or run.step <= 0 or run.total_steps <= 0:
        return None
    elapsed = (now if now is not None else time.time()) - run.started_at
    return elapsed / run.step * max(run.total_steps - run.step, 0)


def running_text(run: TrainingRun, now: float | None = None) -> str:
    """The message while a run is queued or training."""
    head = f"🏋️ **Training run #{run.id}** ({run.trigger})"
    if run.status == "queued":
        return f"{head} is queued; it starts when the trainer is free."
    lines = [f"{head} is training."]
    if run.total_steps > 0:
        parts = [f"`{progress_bar(run.step, run.total_steps)}`", f"step {run.step}/{run.total_steps}"]
        if run.loss is not None:
            parts.append(f"loss {run.loss:.4f}")
        eta = estimate_eta(run, now)
        if eta is not None and run.step < run.total_steps:
            parts.append(f"ETA {format_duration(eta)}")
        lines.append(" · ".join(parts))
    else:
        lines.append("Preparing the base model and the dataset…")
    if run.n_train:
        lines.append(f"Learning all {run.n_train} approved examples.")
    return "\n".join(lines)


def _eval_line(run: TrainingRun) -> str | None:
    return learning_scores(run.metrics)


def final_text(run: TrainingRun, version: ModelVersion | None = None,
               active: ModelVersion | None = None) -> str:
    """The message once a run has ended: outcome, what the version knew, the gate's decision."""
    head = f"**Training run #{run.id}** ({run.trigger})"
    serving = f"v{active.number}" if active else "the base model"
    if run.status == "succeeded":
        if version is not None and active is not None and active.id == version.id:
            lines = [f"✅ {head} succeeded: this server now answers with **v{version.number}**."]
        elif version is not None:
            lines = [f"✅ {head} succeeded and produced v{version.number}; answers still come from {serving}."]
        else:
            lines = [f"✅ {head} succeeded."]
    elif run.status == "gated":
        reason = run.gate_reason or "the evaluation did not improve"
        lines = [f"🚫 {head} was not published: {reason}", f"Answers still come from {serving}."]
    elif run.status == "cancelled":
        lines = [f"⏹️ {head} was cancelled. Answers still come from {serving}."]
    else:
        error = (run.error or "no error text was recorded").strip()
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + "… (cut; the trainer's log has the rest)"
        lines = [f"❌ {head} failed: {error}", f"Answers still come from {serving}."]
    eval_line = _eval_line(run)
    if eval_line:
        lines.append(eval_line)
    if run.total_steps:
        done = f"{run.step}/{run.total_steps} steps"
        if run.started_at and run.finished_at:
            done += f" in {format_duration(run.finished_at - run.started_at)}"
        lines.append(done + ".")
    return "\n".join(lines)


def render_loss_curve(run: TrainingRun) -> bytes | None:
    """A PNG of training loss per step; None without data."""
    points = [(float(p[0]), float(p[1])) for p in run.loss_history if len(p) >= 2]
    if not points:
        return None
    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None,
            label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Training run #{run.id}: {run.status}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class ProgressReporter:
    """Follows every guild's training runs and keeps one status message per run up to date.

    A run is followed from the first poll that sees it queued or running (including runs already
    going when the bot starts); when it ends, its message gets the final text and the loss curve.
    Guilds without a review channel are followed too, silently (nowhere to post).
    """

    POLL_S = 3.0  # how often the runs table is read
    MIN_EDIT_INTERVAL_S = 5.0  # the fewest seconds between two edits of one progress message

    def __init__(self, bot: "GuildtuneBot", *, poll_s: float | None = None,
                 min_edit_interval_s: float | None = None):
        self.bot = bot
        self.poll_s = self.POLL_S if poll_s is None else poll_s
        self.min_edit_interval_s = self.MIN_EDIT_INTERVAL_S if min_edit_interval_s is None else min_edit_interval_s
        self._followed: dict[int, tuple[int, float, str]] = {}  # run id → (guild id, last edit, last text)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="guildtune-training-progress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # wait until it has really stopped
            self._task = None

    async def _loop(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                await self.poll_once()
            except Exception:  # one bad poll (a Discord hiccup) must not stop the reporting
                log.exception("training progress poll failed")
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        for guild in list(self.bot.guilds):
            runs = {r.id: r for r in await self.bot.db.runs.list(guild.id, limit=10)}
            for run in runs.values():
                if run.status in ("queued", "running") and run.id not in self._followed:
                    self._followed[run.id] = (guild.id, 0.0, "")
            for run_id, (guild_id, _, _) in list(self._followed.items()):
                if guild_id != guild.id:
                    continue
                run = runs.get(run_id) or await self.bot.db.runs.get(guild_id, run_id)
                if run is None:
                    del self._followed[run_id]
                    continue
                await self._show(guild, run)

    def _channel(self, guild: discord.Guild, channel_id: int | None) -> discord.abc.Messageable | None:
        if channel_id is None:
            return None
        channel = guild.get_channel(channel_id)
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def _show(self, guild: discord.Guild, run: TrainingRun) -> None:
        guild_id, last_edit, last_text = self._followed[run.id]
        final = run.status in FINAL
        if run.status == "queued":
            return  # the message appears when training starts (or when a queued run ends at once)
        settings = await self.bot.db.settings.get(guild.id)
        channel = self._channel(guild, settings.review_channel_id)
        if final:
            del self._followed[run.id]
            if channel is None:
                return
            version = await self.bot.db.versions.for_run(guild.id, run.id)
            active = await self.bot.db.versions.active(guild.id)
            text = final_text(run, version, active)
            png = await asyncio.to_thread(render_loss_curve, run)
            files = [discord.File(io.BytesIO(png), filename=LOSS_CURVE_FILENAME)] if png else []
            await self._post_or_edit(channel, run, text, files)
            return
        if channel is None:
            return
        text = running_text(run)
        now = time.monotonic()
        if text == last_text or (run.progress_message_id is not None and now - last_edit < self.min_edit_interval_s):
            return
        await self._post_or_edit(channel, run, text, [])
        self._followed[run.id] = (guild_id, now, text)

    async def _post_or_edit(self, channel: discord.abc.Messageable, run: TrainingRun, text: str,
                            files: list[discord.File]) -> None:
        if run.progress_message_id is not None:
            message = channel.get_partial_message(run.progress_message_id)  # type: ignore[attr-defined]
            try:
                await message.edit(content=text, attachments=files, allowed_mentions=NO_MENTIONS)
                return
            except discord.NotFound:
                pass  # someone deleted the status message: post a new one
        message = await channel.send(text, files=files, allowed_mentions=NO_MENTIONS)
        await self.bot.db.runs.update(run.guild_id, run.id, progress_message_id=message.id)
