"""`guildtune demo`: the whole loop offline, in a few minutes on a CPU.

Imports a shipped file of invented community facts (things no base model can know), asks some
of the questions with the embedded base model, trains a version with a progress bar, swaps it
into the in-process server, asks again, and prints before and after side by side.
"""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guildtune.settings import load_settings
from serving.prompting import guild_messages
from serving.protocol import GenerationOptions
from storage.db import Database

DEMO_GUILD = 1
DEMO_QUESTIONS = 5


def community_facts() -> list[dict[str, str]]:
    return json.loads(files("guildtune").joinpath("data/community_facts.json").read_text(encoding="utf-8"))


async def answer_all(server, version, gs, questions) -> list[str]:
    options = GenerationOptions(temperature=0.0, max_tokens=40, timeout_s=300)
    answers = []
    for q in questions:
        pieces = [p async for p in server.chat(version, guild_messages(gs, q), options)]
        answers.append("".join(pieces).strip())
    return answers


async def run_demo(data_dir: Path, steps: int | None, console: Console) -> int:
    from guildtune.runtime import base_model_dir
    from guildtune.train_command import train_now
    from serving.local_server import LocalServer

    settings = load_settings(GUILDTUNE_DATA_DIR=str(data_dir), GUILDTUNE_DB=str(data_dir / "demo.db"),
                             GUILDTUNE_SERVER="local", GUILDTUNE_TRAIN_MAX_STEPS=steps)
    facts = community_facts()
    db = await Database.open(settings.db_path)
    await db.settings.set(DEMO_GUILD, system_prompt="You are the assistant of the Lanternfish guild's Discord.")
    added = await db.examples.add_many(
        DEMO_GUILD, [[{"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"]}]
                     for f in facts], source="import", author_id=None, status="approved")
    console.print(f"Imported {added.created} invented community facts ({added.duplicates} already there) "
                  f"into demo guild {DEMO_GUILD} at {data_dir}.", highlight=False)
    gs = await db.settings.get(DEMO_GUILD)
    questions = [f["question"] for f in facts[:DEMO_QUESTIONS]]

    with console.status("Preparing the embedded Gemma 3 270M (about a minute the first time)…"):
        base_dir = base_model_dir(settings)
    server = LocalServer(base_dir, device=settings.device)
    try:
        before_version = await db.versions.active(DEMO_GUILD)
        with console.status("Asking the current model…"):
            before = await answer_all(server, before_version, gs, questions)
        code = await train_now(settings, DEMO_GUILD, console, server=server)
        if code != 0:
            return code
        version = await db.versions.active(DEMO_GUILD)
        await server.publish(version)
        with console.status(f"Asking v{version.number}…"):
            after = await answer_all(server, version, gs, questions)
    finally:
        await server.close()
        await db.close()
    name = f"v{before_version.number}" if before_version else "base model"
    table = Table(title="Before and after training", show_lines=True)
    table.add_column("question", ratio=2)
    table.add_column(name, ratio=3)
    table.add_column(f"v{version.number}", ratio=3)
    table.add_column("knows it", justify="center")
    for q, b, a, fact in zip(questions, before, after, facts):
        table.add_row(q, b, a, "✔" if fact["expect"].casefold() in a.casefold() else "✘")
    Console().print(table)
    console.print(f"Try it yourself: guildtune ask --guild {DEMO_GUILD} \"{facts[5]['question']}\" "
                  f"(with GUILDTUNE_DATA_DIR={data_dir} GUILDTUNE_DB={data_dir / 'demo.db'})", highlight=False)
    return 0
