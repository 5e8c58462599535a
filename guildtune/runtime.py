"""Wiring the parts together for `guildtune up`, `bot`, `trainer` and `ask`: which model server
the settings ask for, the options each part reads of the settings, and the long-running processes
with a clean shutdown.

The parts never import the settings: each declares the few options it reads as a dataclass
(`BotOptions`, `DaemonOptions`, `JobOptions`, `LaunchOptions`) and this module fills them in.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from guildtune.settings import EMBEDDED_BASE_MODEL, Settings
from serving.protocol import ModelServer
from storage.db import Database

if TYPE_CHECKING:
    from bot.bot import BotOptions
    from trainer.daemon import DaemonOptions
    from trainer.job import JobOptions
    from trainer.launch import LaunchOptions

log = logging.getLogger("guildtune")


class ServiceError(Exception):
    """A service cannot run; the message says why and what to do, and never holds the token."""


TOKEN_HELP = """DISCORD_TOKEN is not set, so the bot cannot log in.

To get one:
  1. Open https://discord.com/developers/applications and create a New Application.
  2. Under Bot, click Reset Token and copy it into .env as DISCORD_TOKEN=... (never share it).
  3. Under Bot > Privileged Gateway Intents, enable MESSAGE CONTENT INTENT
     (needed for the reaction capture and the "Teach as answer" menu).
  4. Under OAuth2 > URL Generator pick the scopes `bot` and `applications.commands` and the
     permissions Send Messages, Embed Links, Attach Files, Read Message History, Add Reactions;
     open the generated URL to invite the bot to your server.

To see the whole loop offline first, without Discord: guildtune demo"""

INTENT_HELP = ("Discord refused the MESSAGE CONTENT intent: enable it in the Developer Portal "
               "(your application > Bot > Privileged Gateway Intents > MESSAGE CONTENT INTENT). "
               "Running without it for now: /teach and /ask work; the 📚 reaction capture cannot read messages.")

DISCORD_UNREACHABLE = ("Discord cannot be reached ({reason}), so the bot cannot log in. Check this machine's "
                       "network connection, DNS and any proxy or firewall, then start it again.")


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters (example texts, user ids) at DEBUG: only on request.
    logging.getLogger("aiosqlite").setLevel(logging.DEBUG if settings.log_sql else logging.INFO)


def bot_options(settings: Settings) -> "BotOptions":
    from bot.bot import BotOptions

    return BotOptions(ask_cooldown_s=settings.ask_cooldown_s, ask_concurrency=settings.ask_concurrency,
                      answer_timeout_s=settings.answer_timeout_s, version_poll_s=settings.version_poll_s,
                      dev_guild_id=settings.dev_guild_id)


def job_options(settings: Settings) -> "JobOptions":
    """A training job's options: the TrainConfig fields the settings name, GUILDTUNE_TRAIN_CONFIG over them."""
    from trainer.job import JobOptions

    train = dict(max_steps=settings.train_max_steps, device=settings.device, qlora=settings.qlora,
                 memory_cap_gib=settings.memory_cap_gib, compile=settings.train_compile, report_to=settings.report_to)
    return JobOptions(db=str(settings.db_path), versions_dir=settings.versions_dir, models_dir=settings.models_dir,
                      base_model=settings.base_model, device=settings.device, train={**train, **settings.train_config},
                      gate_tolerance=settings.gate_tolerance, gate_max_drift=settings.gate_max_drift,
                      gate_sample=settings.gate_sample)


def launch_options(settings: Settings) -> "LaunchOptions":
    from trainer.launch import LaunchOptions

    return LaunchOptions(train_gpus=settings.train_gpus, device=settings.device, base_model=settings.base_model,
                         models_dir=settings.models_dir, qlora=settings.qlora, memory_cap_gib=settings.memory_cap_gib)


def daemon_options(settings: Settings) -> "DaemonOptions":
    from trainer.daemon import DaemonOptions

    return DaemonOptions(keep_versions=settings.keep_versions, poll_s=settings.trainer_poll_s,
                         launch=launch_options(settings), job=job_options(settings))


def base_model_dir(settings: Settings) -> str:
    """The base model as a local Hugging Face folder (dequantizes the embedded GGUF once)."""
    from trainer.base_model import resolve_base_model

    return str(resolve_base_model(settings.base_model, settings.models_dir))


async def make_server(settings: Settings) -> ModelServer:
    if settings.server == "vllm":
        from serving.vllm_server import VllmServer

        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        return VllmServer(settings.vllm_base_url, api_key=key, adapter_dir=settings.vllm_adapter_dir,
                          server_adapter_dir=settings.vllm_server_adapter_dir, name_prefix=settings.tag_prefix,
                          timeout_s=settings.answer_timeout_s)
    if settings.server == "ollama":
        from serving.ollama_server import OllamaServer

        base_dir = None
        if settings.base_model != EMBEDDED_BASE_MODEL or settings.models_dir.exists():
            base_dir = await asyncio.to_thread(base_model_dir, settings)
        return OllamaServer(settings.ollama_host, base_tag=settings.ollama_base_tag, base_model_dir=base_dir,
                            tag_prefix=settings.tag_prefix, quantize=settings.ollama_quantize,
                            timeout_s=settings.answer_timeout_s, work_dir=settings.data_dir / "ollama-staging")
    from serving.local_server import LocalServer

    return LocalServer(await asyncio.to_thread(base_model_dir, settings), device=settings.device)


async def run_services(settings: Settings, *, bot: bool, trainer: bool, stop: asyncio.Event) -> None:
    """Run the bot and/or the trainer daemon until `stop` is set (Ctrl-C), then shut down cleanly:
    a running training job is cancelled and recorded as such.

    The bot connects to Discord first; the model server is made in the background (the first
    start converts the embedded GGUF, a minute or more) and handed to the bot's tracker when it
    is ready, so members get "warming up" from /ask instead of an offline bot. The trainer starts
    once the server is there. A server that cannot be made stops everything with its error."""
    import aiohttp
    import discord

    from bot.bot import GuildtuneBot
    from serving.version_tracker import ActiveVersionTracker
    from trainer.daemon import TrainerDaemon

    db = await Database.open(settings.db_path)
    tracker = ActiveVersionTracker(db, poll_s=settings.version_poll_s)

    async def warm_up() -> ModelServer:
        server = await make_server(settings)
        if bot:
            await tracker.attach(server)
        log.info("the model server is ready")
        return server

    warm = asyncio.create_task(warm_up(), name="warm-up")
    tasks: list[asyncio.Task] = [warm]
    client = None
    try:
        if trainer:
            async def run_trainer():
                daemon = TrainerDaemon(db, daemon_options(settings), await warm,
                                       on_swap=tracker.refresh if bot else None)
                await daemon.run_forever(stop)

            tasks.append(asyncio.create_task(run_trainer(), name="trainer"))
        if bot:
            token = settings.discord_token.get_secret_value()

            async def run_bot(message_content: bool = True):
                nonlocal client
                client = GuildtuneBot(db=db, options=bot_options(settings), tracker=tracker,
                                      message_content=message_content)
                try:
                    await client.start(token)
                except discord.PrivilegedIntentsRequired:
                    log.warning(INTENT_HELP)
                    await client.close()
                    await run_bot(message_content=False)
                except discord.LoginFailure:
                    log.error("Discord rejected DISCORD_TOKEN (it may have been reset). Create a new token "
                              "under Bot > Reset Token and put it in .env.")
                    stop.set()
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    # Only the first login gets here: once connected, discord.py reconnects by itself.
                    reason = (str(exc) or type(exc).__name__).replace(token, "<token>")
                    raise ServiceError(DISCORD_UNREACHABLE.format(reason=reason)) from None

            tasks.append(asyncio.create_task(run_bot(), name="bot"))
        stopper = asyncio.create_task(stop.wait())
        waiting = [*tasks, stopper]
        while True:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception():
                    raise task.exception()
            if done != {warm}:
                break
            waiting.remove(warm)  # warmed up: keep serving
    finally:
        stop.set()
        if client is not None:
            await client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if warm.done() and not warm.cancelled() and warm.exception() is None:
            await warm.result().close()
        await db.close()
