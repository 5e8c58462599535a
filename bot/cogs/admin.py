"""Moderator administration: `/retrain`, `/model`, `/dataset`, `/config` (the training progress
messages have their own cog: bot/cogs/training_progress.py).

Every command checks the caller when it runs (`@moderator_only()`): hiding commands is not security.
`/config show` is the exception: it changes nothing, and the refusal text points members to it to
find out who the moderators are.
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import is_moderator, moderator_only
from bot.formatting import MESSAGE_LIMIT, discord_timestamp, learning_scores
from bot.progress import running_text
from bot.replies import refusal_text, setting_value
from storage.dataset_files import DATASET_EXPORT_FORMATS, EXPORT_STATUSES, KTO_FORMAT, export_examples
from storage.guild_settings import FIELDS, SETTING_RANGES, SettingError
from storage.records import GuildSettings, ModelVersion, TrainingRun

if TYPE_CHECKING:
    from bot.bot import GuildtuneBot

log = logging.getLogger(__name__)


def _ranged(name: str, text: str) -> str:
    """A setting's help with the range parse_setting allows (storage's SETTING_RANGES, not a copy of it)."""
    lo, hi = SETTING_RANGES[name]
    return f"{text} ({lo:g} to {hi:g})"


SETTING_HELP = {
    "moderator_role_ids": "roles whose members moderate (role mentions or ids, space-separated)",
    "review_channel_id": "channel for new pending examples and training progress (mention, id, or off)",
    "reaction_emoji": "the emoji that nominates a reply as an example",
    "auto_approve_moderators": "moderators' own examples are approved at once (true/false)",
    "moderator_upvote_approves": "a moderator's 👍 on an answer approves it as an example (true/false)",
    "schedule": "off, interval:<N>h / interval:<N>m, or daily:HH:MM (UTC)",
    "min_new_examples": "approved examples since the last model that trigger a retrain",
    "system_prompt": "the system prompt for answers and training",
    "temperature": _ranged("temperature", "sampling temperature for answers"),
    "top_k": _ranged("top_k", "top-k sampling for answers"),
    "max_tokens": _ranged("max_tokens", "longest answer in tokens"),
    "max_turns": _ranged("max_turns", "earlier turns a reply chain may contribute to one example"),
    "golden_questions": 'JSON list of {"question", "expect"} the gate checks each new model on',
    "preference_up_votes": _ranged("preference_up_votes",
                                   "net 👍 that make an /ask answer a liked preference example"),
    "preference_down_votes": _ranged("preference_down_votes",
                                     "net 👎 that make an /ask answer a disliked preference example"),
    "moderator_vote_weight": _ranged("moderator_vote_weight", "how many votes a moderator's 👍/👎 counts as"),
}


def when(ts: float | None) -> str:
    """A Discord timestamp: every reader sees it in their own time zone."""
    return discord_timestamp(ts) if ts else "never"


def version_metrics(version: ModelVersion) -> str:
    m = version.metrics
    parts = [learning_scores(m) or ""]
    if m.get("train_loss") is not None:
        parts.append(f"train loss {m['train_loss']:.4f}")
    if m.get("n_train") is not None:
        parts.append(f"{m['n_train']} examples")
    return " · ".join(p for p in parts if p) or "no metrics recorded"


def run_outcome(run: TrainingRun) -> str:
    detail = {"gated": run.gate_reason, "failed": run.error, "cancelled": None}.get(run.status)
    text = f"run #{run.id} {run.status} {when(run.finished_at)}"
    if detail:
        text += f": {detail[:300]}"
    return text


def show_value(name: str, value: Any) -> str:
    if name == "moderator_role_ids":
        return " ".join(f"<@&{r}>" for r in value) or "none (Manage Server only)"
    if name == "review_channel_id":
        return f"<#{value}>" if value else "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if name == "golden_questions":
        return f"{len(value)} question(s)"
    if name == "system_prompt":
        return f"“{value[:300]}{'…' if len(value) > 300 else ''}”"
    return f"`{value}`"


def fit(lines: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """Join lines, dropping trailing ones (and saying so) to stay within one Discord message."""
    text = "\n".join(lines)
    while len(text) > limit and len(lines) > 1:
        lines = lines[:-1]
        text = "\n".join(lines) + "\n… (more not shown)"
    return text[:limit]


class Admin(commands.Cog):
    model_group = app_commands.Group(name="model", description="Moderators: the model this server answers with.",
                                     guild_only=True)
    dataset_group = app_commands.Group(name="dataset", description="Moderators: this server's examples.",
                                       guild_only=True)
    config_group = app_commands.Group(name="config", description="This server's guildtune settings.",
                                      guild_only=True)

    def __init__(self, bot: "GuildtuneBot"):
        self.bot = bot

    # --- /retrain -------------------------------------------------------------------------------
    @app_commands.command(name="retrain", description="Moderators: queue a training run now.")
    @app_commands.guild_only()
    @moderator_only()
    async def retrain(self, interaction: discord.Interaction) -> None:
        run, place, created = await self.bot.db.runs.enqueue(interaction.guild_id, trigger="retrain",
                                                             requested_by=interaction.user.id)
        approved = len(await self.bot.db.examples.approved(interaction.guild_id))
        if created:
            where = "next in line" if place == 1 else f"number {place} in the trainer's queue"
            text = (f"Queued training run #{run.id} on {approved} approved example(s): it is {where}. "
                    "Progress appears in the review channel and in `/model status`.")
        elif run.status == "running":
            text = (f"Training run #{run.id} is already running for this server; `/model status` shows its "
                    "progress. Examples approved now go into the next run.")
        else:
            text = (f"Training run #{run.id} is already queued for this server (number {place} in the queue); "
                    "it will include every example approved before it starts.")
        await interaction.response.send_message(text, ephemeral=True)

    # --- /model ---------------------------------------------------------------------------------
    @model_group.command(name="status", description="Moderators: the active model, its metrics, and training now.")
    @moderator_only()
    async def model_status(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        db = self.bot.db
        active = await db.versions.active(guild_id)
        lines = []
        if active is None:
            lines.append("**Active model:** the base model: no trained version has been published yet.")
        else:
            lines.append(f"**Active model:** v{active.number}, active since {when(active.activated_at)}, "
                         f"trained on {active.n_examples} example(s).")
            lines.append(f"**Evaluation:** {version_metrics(active)}")
            served = self.bot.tracker.get(guild_id)
            if served is None or served.id != active.id:
                now = f"v{served.number}" if served else "the base model"
                lines.append(f"The model server is still loading v{active.number}; answers come from {now} "
                             "until it is ready.")
        current = await db.runs.current(guild_id)
        if current is None:
            lines.append("**Training:** nothing queued or running. `/retrain` queues a run.")
        elif current.status == "queued":
            place = await db.runs.queue_position(current)
            lines.append(f"**Training:** run #{current.id} is queued (number {place} in line).")
        else:
            lines.append("**Training:** " + running_text(current))
        last = await db.runs.last_finished(guild_id)
        if last is not None:
            lines.append(f"**Last finished:** {run_outcome(last)}")
        await interaction.response.send_message(fit(lines), ephemeral=True)

    @model_group.command(name="history", description="Moderators: every model version and recent runs.")
    @moderator_only()
    async def model_history(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        versions = await self.bot.db.versions.list(guild_id, limit=10)
        lines = ["**Model versions** (newest first):"]
        if not versions:
            lines.append("none yet: this server answers with the base model.")
        for v in versions:
            marker = " ← answering now" if v.status == "active" else ""
            lines.append(f"**v{v.number}** · {v.status}{marker} · made {when(v.created_at)} · "
                         f"{v.n_examples} example(s) · {version_metrics(v)}")
        runs = await self.bot.db.runs.list(guild_id, limit=5)
        if runs:
            lines.append("**Recent training runs:**")
            for r in runs:
                lines.append(run_outcome(r) if r.finished_at else f"run #{r.id} {r.status}")
        lines.append("`/model rollback [version]` switches back to an earlier version.")
        await interaction.response.send_message(fit(lines), ephemeral=True)

    @model_group.command(name="rollback", description="Moderators: answer with an earlier model version again.")
    @app_commands.describe(version="Version number (from /model history); default: the one active before this")
    @moderator_only()
    async def model_rollback(self, interaction: discord.Interaction,
                             version: app_commands.Range[int, 1, None] | None = None) -> None:
        guild_id = interaction.guild_id
        db = self.bot.db
        active = await db.versions.active(guild_id)
        if version is None:
            target = await db.versions.rollback_target(guild_id)
            if target is None:
                await interaction.response.send_message(
                    "There is no earlier version to roll back to (`/model history` lists them).", ephemeral=True)
                return
        else:
            target = await db.versions.by_number(guild_id, version)
            if target is None:
                await interaction.response.send_message(
                    f"There is no version v{version} in this server; `/model history` lists the versions.",
                    ephemeral=True)
                return
        if active is not None and target.id == active.id:
            await interaction.response.send_message(f"v{target.number} is already the active version.",
                                                    ephemeral=True)
            return
        if target.status == "removed":
            await interaction.response.send_message(
                f"v{target.number} was removed from the model server to save space and can't be restored; "
                "choose a newer one from `/model history`.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)  # loading a version can take a while
        try:
            target = await db.versions.activate(guild_id, target.id)
        except LookupError as exc:
            await interaction.followup.send(refusal_text(exc), ephemeral=True)
            return
        await self.bot.tracker.refresh()
        served = self.bot.tracker.get(guild_id)
        before = f"v{active.number}" if active else "the base model"
        if served is not None and served.id == target.id:
            text = f"Rolled back: this server now answers with v{target.number} (was {before})."
        else:
            text = (f"v{target.number} is now the active version, but the model server could not load it yet; "
                    f"answers keep coming from {before} until it can (the bot retries every few seconds).")
        log.info("guild %s: %s rolled back to v%s", guild_id, interaction.user.id, target.number)
        await interaction.followup.send(text, ephemeral=True)

    # --- /dataset -------------------------------------------------------------------------------
    @dataset_group.command(name="stats", description="Moderators: how many examples by status and source.")
    @moderator_only()
    async def dataset_stats(self, interaction: discord.Interaction) -> None:
        guild_id = interaction.guild_id
        db = self.bot.db
        stats = await db.examples.stats(guild_id)
        by_status = stats["status"]
        lines = ["**Examples:** " + " · ".join(f"{by_status.get(s, 0)} {s}"
                                               for s in ("approved", "pending", "rejected", "deleted"))]
        if stats["source"]:
            lines.append("**By source:** " + ", ".join(f"{k.replace('_', ' ')} {n}"
                                                       for k, n in sorted(stats["source"].items())))
        active = await db.versions.active(guild_id)
        since = active.created_at if active else 0.0
        new = await db.examples.approved_since(guild_id, since)
        settings = await db.settings.get(guild_id)
        model = f"v{active.number}" if active else "any model (none trained yet)"
        lines.append(f"**New since {model}:** {new} approved; a retrain starts at {settings.min_new_examples} "
                     f"(schedule: `{settings.schedule}`).")
        await interaction.response.send_message(fit(lines), ephemeral=True)

    @dataset_group.command(name="export", description="Moderators: download this server's examples as a file.")
    @app_commands.describe(format="messages: JSONL that TRL reads; alpaca or sharegpt: JSON; kto: the voted answers",
                           status="which examples (default: approved)")
    @app_commands.choices(
        format=[app_commands.Choice(name=f, value=f) for f in DATASET_EXPORT_FORMATS],
        status=[app_commands.Choice(name=s, value=s) for s in EXPORT_STATUSES])
    @moderator_only()
    async def dataset_export(self, interaction: discord.Interaction["GuildtuneBot"], format: str = "messages",
                             status: str = "approved") -> None:
        guild_id = interaction.guild_id
        try:
            export = await export_examples(self.bot.db, guild_id, format=format, status=status)
        except ValueError as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        if not export.count:
            kind = "voted answers" if format == KTO_FORMAT else "examples"
            await interaction.response.send_message(f"There are no {'' if status == 'all' else status + ' '}"
                                                    f"{kind} to export yet.", ephemeral=True)
            return
        data = export.text.encode("utf-8")
        if len(data) > interaction.filesize_limit:
            await interaction.response.send_message(
                f"The export is {len(data) / 1e6:.1f} MB, more than Discord lets the bot attach here. "
                f"Export it on the bot's machine: `guildtune dataset export --guild {guild_id} --format {format} "
                f"--status {status} -o examples{export.suffix}`.", ephemeral=True)
            return
        filename = f"guildtune-{guild_id}-{status}-{format}{export.suffix}"
        await interaction.response.send_message(
            f"{export.what} in {format} format.",
            file=discord.File(io.BytesIO(data), filename=filename), ephemeral=True)

    # --- /config --------------------------------------------------------------------------------
    @config_group.command(name="show", description="This server's guildtune settings.")
    async def config_show(self, interaction: discord.Interaction) -> None:
        settings = await self.bot.db.settings.get(interaction.guild_id)
        defaults = GuildSettings(guild_id=interaction.guild_id)
        lines = ["**guildtune settings** (`/config set <setting> <value>`; `default` resets one):"]
        for name in FIELDS:
            value = getattr(settings, name)
            mark = "" if value != getattr(defaults, name) else " *(default)*"
            lines.append(f"`{name}`: {show_value(name, value)}{mark}")
        if not await is_moderator(self.bot.db, interaction.guild_id, interaction.user):
            lines.append("Only moderators can change these.")
        await interaction.response.send_message(fit(lines), ephemeral=True)

    @config_group.command(name="set", description="Moderators: change one setting.")
    @app_commands.describe(setting="which setting (start typing for the list)",
                           value="the new value, or 'default' to reset it")
    @moderator_only()
    async def config_set(self, interaction: discord.Interaction, setting: str, value: str) -> None:
        guild = interaction.guild
        name = setting.strip()
        try:
            if name in FIELDS and value.strip().lower() == "default":
                new = getattr(GuildSettings(guild_id=guild.id), name)
            else:
                new = setting_value(name, value)
            self._check_exists(guild, name, new)
        except SettingError as exc:
            await interaction.response.send_message(f"{exc}", ephemeral=True)
            return
        old = getattr(await self.bot.db.settings.get(guild.id), name)
        await self.bot.db.settings.set(guild.id, **{name: new})
        log.info("guild %s: %s set %s", guild.id, interaction.user.id, name)
        await interaction.response.send_message(
            f"`{name}` is now {show_value(name, new)} (was {show_value(name, old)}).", ephemeral=True)

    @staticmethod
    def _check_exists(guild: discord.Guild, name: str, value: Any) -> None:
        """A channel or role id must name something in this server."""
        if name == "review_channel_id" and value is not None:
            channel = guild.get_channel(value)
            if not isinstance(channel, discord.abc.Messageable):
                raise SettingError(f"review_channel_id: there is no text channel {value} in this server; "
                                   "mention one like #reviews, or use 'off'.")
        if name == "moderator_role_ids":
            missing = [r for r in value if guild.get_role(r) is None]
            if missing:
                raise SettingError(f"moderator_role_ids: no role {', '.join(map(str, missing))} in this server; "
                                   "mention roles like @Moderators.")

    @config_set.autocomplete("setting")
    async def config_setting_names(self, interaction: discord.Interaction,
                                   current: str) -> list[app_commands.Choice[str]]:
        current = current.lower().strip()
        names = [n for n in FIELDS if current in n]
        return [app_commands.Choice(name=f"{n}: {SETTING_HELP.get(n, '')}"[:100], value=n) for n in names][:25]


async def setup(bot: "GuildtuneBot") -> None:
    await bot.add_cog(Admin(bot))
