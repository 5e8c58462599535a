"""`guildtune ask`: what admins and scripts use to check a guild's model without Discord."""
from __future__ import annotations

import sys

from rich.console import Console

from guildtune.runtime import make_server
from guildtune.settings import Settings
from serving.prompting import GuildNotes, guild_options
from serving.protocol import ModelServerError
from storage.conversation import is_blank
from storage.db import Database


async def ask_once(settings: Settings, guild_id: int, question: str, number: int | None, console: Console) -> int:
    if is_blank(question):
        console.print("[red]error:[/red] the question is empty" + (" (only invisible characters)" if question.strip() else "")
                      + ": ask something.")
        return 2
    db = await Database.open(settings.db_path)
    server = None
    try:
        if number is not None:
            version = await db.versions.by_number(guild_id, number)
            if version is None or version.status == "removed":
                known = ", ".join(f"v{v.number}" for v in await db.versions.list(guild_id) if v.status != "removed")
                console.print(f"[red]error:[/red] guild {guild_id} has no servable version v{number}"
                              f" (available: {known or 'none yet'}).", highlight=False)
                return 1
        else:
            version = await db.versions.active(guild_id)
        gs = await db.settings.get(guild_id)
        console.print(f"[dim]{'v%d' % version.number if version else 'base model (no trained version yet)'}[/dim]",
                      highlight=False)
        server = await make_server(settings)
        if version is not None:
            await server.publish(version)
        messages = await GuildNotes(db).messages(gs, version, question)
        async for piece in server.chat(version, messages, guild_options(gs, settings.answer_timeout_s)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    except ModelServerError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    finally:
        if server is not None:
            await server.close()
        await db.close()
