"""Which training settings learn the community's facts best? One real run per setting, side by side.

Each setting (a JSON object of TrainConfig fields, as GUILDTUNE_TRAIN_CONFIG takes) trains the
facts of `bench/data/learning_facts.json` through the real job (`train_now`, gate tolerances opened
so every run publishes and its numbers can be read), then the version is asked every taught question
and every paraphrase greedily, in batches, in memory (`trainer.recall.greedy_answers`: the prompt
the server builds). Drift is the gate's own measure. The first setting is the baseline; each row
prints its ratios against it. Results: bench/results/learning_sweep.json (or --out).

Usage: python bench/learning_sweep.py --device cuda --settings '[{}, {"learning_rate": 1e-4}]'
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from learning_quality import ANSWER_TOKENS, GUILD, SYSTEM_PROMPT, import_facts, load_facts, recall  # noqa: E402


def questions_of(facts: list[dict]) -> list[str]:
    return [f["question"] for f in facts] + [p for f in facts for p in f["paraphrases"]]


async def served_messages(db, version, facts: list[dict]) -> list[list[dict]]:
    """Every question as /ask would send it to `version` (with its notes, if it was trained with them)."""
    from serving.prompting import GuildNotes
    from storage.records import GuildSettings

    gs, notes = GuildSettings(guild_id=GUILD, system_prompt=SYSTEM_PROMPT), GuildNotes(db)
    return [await notes.messages(gs, version, q) for q in questions_of(facts)]


def answers_in_memory(base_dir: str, adapter: str | None, facts: list[dict], cfg, asked: list[list[dict]]
                      ) -> tuple[list[str], list[list[str]]]:
    from trainer.recall import greedy_answers
    from trainer.sft import evaluation_model

    with evaluation_model(base_dir, adapter, cfg) as (model, tokenizer):
        answers = greedy_answers(model, tokenizer, asked, [ANSWER_TOKENS] * len(asked), batch_size=64)
    taught, rest = answers[:len(facts)], answers[len(facts):]
    para, i = [], 0
    for f in facts:
        para.append(rest[i:i + len(f["paraphrases"])])
        i += len(f["paraphrases"])
    return taught, para


async def one_setting(setting: dict, facts: list[dict], args, base_dir: str, server) -> dict:
    from rich.console import Console

    from guildtune.settings import load_settings
    from guildtune.train_command import train_now
    from storage.db import Database
    from trainer.config import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="learning-sweep-"))
    env = {"GUILDTUNE_DATA_DIR": str(work), "GUILDTUNE_DB": str(work / "s.db"),
           "GUILDTUNE_MODELS_DIR": str(args.models_dir), "GUILDTUNE_SERVER": "local", "GUILDTUNE_DEVICE": args.device,
           "GUILDTUNE_BASE_MODEL": args.base, "GUILDTUNE_TRAIN_CONFIG": json.dumps(setting),
           "GUILDTUNE_GATE_MAX_DRIFT": "100", "GUILDTUNE_GATE_TOLERANCE": "1", "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    os.environ.update(env)
    import_facts(facts, {**os.environ}, work)
    settings = load_settings()
    db = await Database.open(settings.db_path)
    try:
        await db.settings.set(GUILD, system_prompt=SYSTEM_PROMPT)
        t0 = time.perf_counter()
        code = await train_now(settings, GUILD, Console(stderr=True), server=server)
        elapsed = time.perf_counter() - t0
        version = await db.versions.active(GUILD)
        asked = await served_messages(db, version, facts) if version is not None else []
    finally:
        await db.close()
    if code != 0 or version is None:
        return {"setting": setting, "error": f"exit {code}"}
    taught, para = answers_in_memory(base_dir, version.adapter_path, facts, TrainConfig(device=args.device), asked)
    m = version.metrics
    return {"setting": setting, **recall(facts, taught, para), "drift": m["drift"], "steps": m["steps"],
            "train_loss": m["train_loss"], "gate_taught_recall": m["taught_recall"],
            "gate_paraphrase_recall": m["paraphrase_recall"], "n_rows": m["n_rows"], "train_s": elapsed,
            "sample_answers": list(zip([f["question"] for f in facts[:3]], taught[:3]))}


async def run(args) -> list[dict]:
    from guildtune.runtime import base_model_dir
    from guildtune.settings import load_settings
    from serving.local_server import LocalServer

    facts = load_facts(Path(args.facts_file), args.facts)
    os.environ.update({"GUILDTUNE_MODELS_DIR": str(args.models_dir), "GUILDTUNE_BASE_MODEL": args.base})
    base_dir = base_model_dir(load_settings())
    server = LocalServer(base_dir, device=args.device)
    rows = []
    try:
        for setting in json.loads(args.settings):
            row = await one_setting(setting, facts, args, base_dir, server)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("sample_answers", "misses")}), flush=True)
    finally:
        await server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--settings", default="[{}]", help="JSON list of TrainConfig overrides; the first is the baseline")
    parser.add_argument("--facts", type=int, default=None)
    parser.add_argument("--facts-file", default=str(REPO / "bench" / "data" / "learning_facts.json"))
    parser.add_argument("--models-dir", default=os.environ.get("GUILDTUNE_MODELS_DIR", str(REPO / "data" / "models")))
    parser.add_argument("--base", default="embedded:gemma-3-270m")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "learning_sweep.json"))
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    base = next((r for r in rows if "error" not in r), None)
    print(f"{'setting':60} taught  para   drift  steps  (ratios vs the first)")
    for r in rows:
        if "error" in r:
            print(f"{json.dumps(r['setting'])[:60]:60} {r['error']}")
            continue
        ratio = (f"{r['taught_recall'] / base['taught_recall']:.2f}x / {r['paraphrase_recall'] / base['paraphrase_recall']:.2f}x"
                 if base and base["taught_recall"] and base["paraphrase_recall"] else "")
        print(f"{json.dumps(r['setting'])[:60]:60} {r['taught_recall']:5.0%}  {r['paraphrase_recall']:5.0%}  "
              f"{r['drift']:+6.1%}  {r['steps']:5d}  {ratio}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "n_facts": len(load_facts(Path(args.facts_file), args.facts)),
                                          "rows": rows}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
