"""`guildtune train --guild G`: one run now, in the foreground, with a progress bar."""
from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from guildtune.runtime import daemon_options, make_server
from guildtune.settings import Settings
from storage.db import Database
from trainer.daemon import TrainerDaemon


async def follow(db: Database, guild_id: int, run_id: int, progress: Progress, task) -> None:
    while True:
        run = await db.runs.get(guild_id, run_id)
        if run.total_steps:
            loss = f"loss {run.loss:.3f}" if run.loss is not None else ""
            progress.update(task, total=run.total_steps, completed=run.step, loss=loss)
        await asyncio.sleep(0.5)


async def train_now(settings: Settings, guild_id: int, console: Console, server=None) -> int:
    """Returns the exit code. Pass `server` to publish into one the caller keeps using.

    The model server is made before a run is claimed, so a base model that cannot load fails
    here with nothing left running; runs whose process died are failed first (`reap_dead_runs`),
    so a crash never blocks the next `guildtune train`."""
    db = await Database.open(settings.db_path)
    own_server = server is None
    try:
        if own_server:
            server = await make_server(settings)
        daemon = TrainerDaemon(db, daemon_options(settings), server)
        for dead in await daemon.reap_dead_runs():
            console.print(f"[yellow]run {dead.id} of guild {dead.guild_id} had been left running by a process "
                          "that died; marked failed.[/yellow]", highlight=False)
        run, _, created = await db.runs.enqueue(guild_id, trigger="cli")
        if not created and run.status == "running":
            by = f" (pid {run.owner.pid})" if run.owner else ""
            console.print(f"[red]error:[/red] run {run.id} of guild {guild_id} is already training{by}; "
                          "follow it with /model status or wait for it.", highlight=False)
            return 1
        claimed = await db.runs.claim(guild_id, run.id)
        if claimed is None:
            console.print(f"[red]error:[/red] run {run.id} was taken by a running trainer daemon.", highlight=False)
            return 1
        with Progress(TextColumn("[bold]training[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task("train", total=None, loss="loading…")
            watcher = asyncio.create_task(follow(db, guild_id, run.id, progress, task))
            try:
                outcome = await daemon.process(claimed)
            finally:
                watcher.cancel()
        final = outcome.run
        if outcome.published:
            version = await db.versions.active(guild_id)
            console.print(f"[green]v{version.number} is active[/green] for guild {guild_id}: "
                          f"{final.metrics.get('gate', '')}", highlight=False)
            timings = {**final.metrics.get("timings", {}), **outcome.timings}
            if timings:
                console.print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), highlight=False)
            return 0
        why = final.gate_reason or final.error or final.status
        console.print(f"[yellow]run {final.id} {final.status}:[/yellow] {why}", highlight=False)
        return 1
    finally:
        if own_server and server is not None:
            await server.close()
        await db.close()
