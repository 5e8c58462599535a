"""Does guildtune learn what a community teaches? Taught recall, paraphrase recall, drift, time to learn.

48 invented facts of an invented community (`bench/data/learning_facts.json`, written for the
project), each with three hand-written paraphrases that are never trained on. The facts go in
through the real import path (`guildtune dataset import --approve`, a child process), are trained
by the real job with the default settings (`train_now`: queue → child process → gate → publish →
swap, as `guildtune up` does), and are asked through the real in-process server, greedy.

- taught recall: share of taught questions whose answer contains the fact's `expect` text;
- paraphrase recall: the same over the paraphrases (each paraphrase counts);
- drift: the gate's measure (trainer/drift.py) on the shipped general prompts, relative to the base;
- queued_to_answer_s: from queueing the run to the first token of an answer from the new version.
The base model is measured the same way first (its drift is 0 by definition). Results are merged
into `bench/results/learning_quality.json` under the device's key ("cpu" or "gpu").

Usage: python bench/learning_quality.py [--device cpu|cuda] [--facts N] [--models-dir DIR] [--base MODEL]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GUILD = 4040
SYSTEM_PROMPT = "You are the assistant of the Copperfield Makers' Discord server."
ANSWER_TOKENS = 40
#: Questions asked at once (the server decodes what arrives together where it can).
CONCURRENCY = 16
GENERAL_SAMPLES = ["Give three tips for staying healthy.", "What is the capital of France?",
                   "Write a short thank-you note to a friend who helped me move."]


def load_facts(path: Path, n: int | None) -> list[dict]:
    facts = json.loads(path.read_text(encoding="utf-8"))
    return facts[:n] if n else facts


def import_facts(facts: list[dict], env: dict[str, str], workdir: Path) -> str:
    """The real import path: an alpaca file through `guildtune dataset import --approve`."""
    file = workdir / "facts_alpaca.json"
    file.write_text(json.dumps([{"instruction": f["question"], "input": "", "output": f["answer"]} for f in facts]))
    out = subprocess.run([sys.executable, "-m", "guildtune", "dataset", "import", "--guild", str(GUILD), "--approve",
                          str(file)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"import failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    return out.stdout.strip()


async def ask_all(server, version, gs, questions: list[str]) -> list[str]:
    from serving.prompting import guild_messages
    from serving.protocol import GenerationOptions

    options = GenerationOptions(temperature=0.0, max_tokens=ANSWER_TOKENS, timeout_s=3600)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(q: str) -> str:
        async with gate:
            return "".join([p async for p in server.chat(version, guild_messages(gs, q), options)]).strip()

    return list(await asyncio.gather(*(one(q) for q in questions)))


def recall(facts: list[dict], taught: list[str], para: list[list[str]]) -> dict:
    def has(f, a):
        return f["expect"].casefold() in a.casefold()

    taught_ok = [has(f, a) for f, a in zip(facts, taught)]
    para_ok = [[has(f, a) for a in answers] for f, answers in zip(facts, para)]
    flat = [ok for row in para_ok for ok in row]
    return {"taught_recall": sum(taught_ok) / len(facts), "paraphrase_recall": sum(flat) / len(flat),
            "taught_known": sum(taught_ok), "paraphrases_known": sum(flat), "paraphrases_asked": len(flat),
            "misses": [f["question"] for f, ok in zip(facts, taught_ok) if not ok][:10]}


async def answers_of(server, version, gs, facts):
    taught = await ask_all(server, version, gs, [f["question"] for f in facts])
    flat = await ask_all(server, version, gs, [p for f in facts for p in f["paraphrases"]])
    para, i = [], 0
    for f in facts:
        para.append(flat[i:i + len(f["paraphrases"])])
        i += len(f["paraphrases"])
    general = await ask_all(server, version, gs, GENERAL_SAMPLES)
    return taught, para, general


class FirstAnswerClock:
    """Watches the active pointer during training and times the first token of the new version's answer."""

    def __init__(self, db, server, gs, question: str):
        self.db, self.server, self.gs, self.question = db, server, gs, question
        self.first_token_at: float | None = None

    async def watch(self, before_id: int | None) -> None:
        from serving.prompting import guild_messages
        from serving.protocol import GenerationOptions

        while True:
            active = await self.db.versions.active(GUILD)
            if active is not None and active.id != before_id:
                options = GenerationOptions(temperature=0.0, max_tokens=4, timeout_s=600)
                async for _ in self.server.chat(active, guild_messages(self.gs, self.question), options):
                    self.first_token_at = time.perf_counter()
                    break
                return
            await asyncio.sleep(0.05)


async def run(args) -> dict:
    from rich.console import Console

    from guildtune.runtime import base_model_dir
    from guildtune.settings import load_settings
    from guildtune.train_command import train_now
    from serving.local_server import LocalServer
    from storage.db import Database

    facts = load_facts(Path(args.facts_file), args.facts)
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="learning-quality-"))
    env = {**os.environ, "GUILDTUNE_DATA_DIR": str(work), "GUILDTUNE_DB": str(work / "lq.db"),
           "GUILDTUNE_MODELS_DIR": str(args.models_dir), "GUILDTUNE_SERVER": "local", "GUILDTUNE_DEVICE": args.device,
           "GUILDTUNE_BASE_MODEL": args.base, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for key in ("GUILDTUNE_TRAIN_MAX_STEPS",):
        env.pop(key, None)
    os.environ.update(env)
    settings = load_settings()
    console.print(import_facts(facts, env, work))
    db = await Database.open(settings.db_path)
    await db.settings.set(GUILD, system_prompt=SYSTEM_PROMPT)
    gs = await db.settings.get(GUILD)
    server = LocalServer(base_model_dir(settings), device=args.device)
    try:
        t0 = time.perf_counter()
        base_taught, base_para, base_general = await answers_of(server, None, gs, facts)
        base = recall(facts, base_taught, base_para)
        base["ask_s"] = time.perf_counter() - t0
        console.print(f"base: taught {base['taught_recall']:.0%}, paraphrased {base['paraphrase_recall']:.0%}")

        clock = FirstAnswerClock(db, server, gs, facts[0]["question"])
        queued = time.perf_counter()
        watcher = asyncio.create_task(clock.watch(None))
        code = await train_now(settings, GUILD, console, server=server)
        if code != 0:
            watcher.cancel()
            raise SystemExit(f"training did not publish a version (exit {code}); the reason is printed above")
        await asyncio.wait_for(watcher, 600)
        queued_to_answer = clock.first_token_at - queued
        version = await db.versions.active(GUILD)
        t0 = time.perf_counter()
        taught, para, general = await answers_of(server, version, gs, facts)
        trained = recall(facts, taught, para)
        trained["ask_s"] = time.perf_counter() - t0
        m = version.metrics
        trained.update({"drift": m["drift"], "gate": m["gate"], "gate_taught_recall": m["taught_recall"],
                        "gate_paraphrase_recall": m["paraphrase_recall"], "steps": m["steps"],
                        "n_rows": m["n_rows"], "n_paraphrased": m["n_paraphrased"], "n_general": m["n_general"],
                        "train_loss": m["train_loss"], "timings": m["timings"]})
        base["drift"] = 0.0
    finally:
        await server.close()
        await db.close()
    return {"base": base, "trained": trained, "queued_to_answer_s": queued_to_answer, "n_facts": len(facts),
            "general_answers": {q: {"base": b, "trained": t} for q, b, t in zip(GENERAL_SAMPLES, base_general, general)},
            "device": args.device, "base_model": args.base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--facts", type=int, default=None, help="use only the first N facts")
    parser.add_argument("--facts-file", default=str(REPO / "bench" / "data" / "learning_facts.json"))
    parser.add_argument("--models-dir", default=os.environ.get("GUILDTUNE_MODELS_DIR", str(REPO / "data" / "models")))
    parser.add_argument("--base", default="embedded:gemma-3-270m")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "learning_quality.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    key = "gpu" if args.device == "cuda" else "cpu"
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[key] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    b, t = result["base"], result["trained"]
    print(f"{key}: {result['n_facts']} facts; taught recall {b['taught_recall']:.0%} -> {t['taught_recall']:.0%}; "
          f"paraphrase recall {b['paraphrase_recall']:.0%} -> {t['paraphrase_recall']:.0%}; "
          f"drift {t['drift']:+.1%}; queued -> answering {result['queued_to_answer_s']:.1f} s")
    print(f"targets: taught >= 95% ({t['taught_recall'] / 0.95:.2f}x), paraphrase >= 70% "
          f"({t['paraphrase_recall'] / 0.70:.2f}x), drift <= 5% ({'met' if t['drift'] <= 0.05 else 'missed'})")
    for q, pair in result["general_answers"].items():
        print(f"  {q}\n    base:    {pair['base'][:160]!r}\n    trained: {pair['trained'][:160]!r}")


if __name__ == "__main__":
    main()
