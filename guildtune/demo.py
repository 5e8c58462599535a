"""`guildtune demo`: the whole loop offline, in a few minutes on a CPU.

Imports a shipped file of invented community facts (things no base model can know), asks the
questions with the embedded base model, trains a version with a progress bar, swaps it into the
in-process server, asks again, and prints before and after side by side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guildtune.settings import Settings, load_settings
from serving.prompting import GuildNotes
from serving.protocol import GenerationOptions
from storage.db import Database

DEMO_GUILD = 1
DEMO_QUESTIONS = 6
DEMO_SYSTEM_PROMPT = "You are the assistant of the Lanternfish guild's Discord."


def community_facts() -> list[dict]:
    """The shipped invented facts: question, answer, `expect` (what a right answer contains) and
    `paraphrases` (the same question in members' words, never trained on)."""
    return json.loads(files("guildtune").joinpath("data/community_facts.json").read_text(encoding="utf-8"))


def knows(fact: dict, answer: str) -> bool:
    return fact["expect"].casefold() in answer.casefold()


@dataclass
class Comparison:
    questions: list[str]
    before: list[str]
    after: list[str]
    before_name: str
    after_name: str
    exit_code: int


async def answer_all(server, notes: GuildNotes, version, gs, questions) -> list[str]:
    options = GenerationOptions(temperature=0.0, max_tokens=40, timeout_s=600)
    answers = []
    for q in questions:
        messages = await notes.messages(gs, version, q)
        pieces = [p async for p in server.chat(version, messages, options)]
        answers.append("".join(pieces).strip())
    return answers


async def teach_train_compare(settings: Settings, guild_id: int, facts: list[dict[str, str]],
                              questions: list[str], console: Console) -> Comparison:
    """Teach `facts` as approved examples, ask `questions`, train and swap, ask again."""
    from guildtune.runtime import base_model_dir
    from guildtune.train_command import train_now
    from serving.local_server import LocalServer

    db = await Database.open(settings.db_path)
    try:
        await db.settings.set(guild_id, system_prompt=DEMO_SYSTEM_PROMPT)
        added = await db.examples.add_many(
            guild_id, [[{"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"]}]
                       for f in facts], source="teach", author_id=None, status="approved")
        console.print(f"Taught {added.created} community facts ({added.duplicates} already known) "
                      f"to guild {guild_id}.", highlight=False)
        gs = await db.settings.get(guild_id)
        with console.status("Preparing the base model (about a minute the first time)…"):
            base_dir = base_model_dir(settings)
        server = LocalServer(base_dir, device=settings.device)
        try:
            old = await db.versions.active(guild_id)
            if old is not None:
                await server.publish(old)
            with console.status("Asking the current model…"):
                before = await answer_all(server, GuildNotes(db), old, gs, questions)
            code = await train_now(settings, guild_id, console, server=server)
            new = await db.versions.active(guild_id)
            with console.status("Asking again…"):
                after = await answer_all(server, GuildNotes(db), new, gs, questions) if code == 0 else before
        finally:
            await server.close()
    finally:
        await db.close()
    return Comparison(questions, before, after, f"v{old.number}" if old else "base model",
                      f"v{new.number}" if new else "base model", code)


async def run_demo(data_dir: Path, steps: int | None, console: Console) -> int:
    outer = load_settings()
    settings = load_settings(GUILDTUNE_DATA_DIR=str(data_dir), GUILDTUNE_DB=str(data_dir / "demo.db"),
                             GUILDTUNE_MODELS_DIR=str(outer.models_dir), GUILDTUNE_SERVER="local",
                             GUILDTUNE_TRAIN_MAX_STEPS=steps)
    facts = community_facts()
    shown = facts[:DEMO_QUESTIONS]
    asked_differently = [(f, p) for f in shown for p in f["paraphrases"]]
    result = await teach_train_compare(settings, DEMO_GUILD, facts,
                                       [f["question"] for f in shown] + [p for _, p in asked_differently], console)
    if result.exit_code != 0:
        return result.exit_code
    taught = sum(knows(f, a) for f, a in zip(shown, result.after))
    rephrased = sum(knows(f, a) for (f, _), a in zip(asked_differently, result.after[len(shown):]))
    table = Table(title="Before and after training", show_lines=True)
    table.add_column("question", ratio=2)
    table.add_column(result.before_name, ratio=3)
    table.add_column(result.after_name, ratio=3)
    table.add_column("knows it", justify="center")
    for q, b, a, fact in zip(result.questions[:len(shown)], result.before, result.after, shown):
        table.add_row(q, b, a, "✔" if knows(fact, a) else "✘")
    Console().print(table)
    console.print(f"{result.after_name} answers {taught} of {len(shown)} taught questions and {rephrased} of "
                  f"{len(asked_differently)} asked differently (members' own words, never trained on).",
                  highlight=False)
    console.print(f"Ask it more: GUILDTUNE_DB={data_dir / 'demo.db'} guildtune ask --guild {DEMO_GUILD} "
                  f"\"{facts[-1]['question']}\"", highlight=False, markup=False)
    return 0
