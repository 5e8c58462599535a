"""Time to learn: a queued run → the new version answering from the in-process server.

1,000 rows of alpaca_en_demo (real text), the embedded model's real tokenizer and chat template,
random weights of the Gemma 3 270M shape (same speed as trained weights), on the GPU. The clock
starts when the run is queued and stops at the first token of an answer from the new version.
Breakdown: the job's own phases (load, tokenize, train, eval+gate, save), the child process around
them, publish (adapter load + preload in the server), swap (pointer flip + the bot's tracker).

Usage (GPU): PYTHONPATH=. python bench/time_to_learn.py --base-files DIR --data alpaca_en_demo.json
  DIR holds config.json and the tokenizer files of the embedded model (no weights: they are
  random-initialised here). `--compile off` to measure without torch.compile.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_random_base(files: Path, out: Path) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.perf_counter()
    shutil.copytree(files, out, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    return time.perf_counter() - t0


async def measure(args, base: Path, work: Path) -> dict:
    from guildtune.runtime import daemon_options
    from guildtune.settings import load_settings
    from serving.local_server import LocalServer
    from serving.protocol import GenerationOptions
    from serving.version_tracker import ActiveVersionTracker
    from storage.db import Database
    from storage.formats import parse_file
    from trainer.daemon import TrainerDaemon

    settings = load_settings(GUILDTUNE_DATA_DIR=str(work), GUILDTUNE_DB=str(work / "t.db"), GUILDTUNE_SERVER="local",
                             GUILDTUNE_BASE_MODEL=str(base), GUILDTUNE_DEVICE=args.device,
                             GUILDTUNE_TRAIN_COMPILE=args.compile,
                             # random weights know nothing and drift anywhere: the gate's whole work is
                             # still on the clock, its verdict is not what this measures
                             GUILDTUNE_GATE_MAX_DRIFT=100, GUILDTUNE_GATE_TOLERANCE=1)
    db = await Database.open(settings.db_path)
    rows = parse_file(Path(args.data)).rows[: args.rows]
    added = await db.examples.add_many(1, [r.conversation for r in rows], source="import", author_id=None,
                                       status="approved")
    server = LocalServer(str(base), device=args.device)
    await server.preload(None)  # the bot is up and answering before the run, as in production
    tracker = ActiveVersionTracker(db, server, poll_s=3600)
    await tracker.start()
    daemon = TrainerDaemon(db, daemon_options(settings), server, on_swap=tracker.refresh)
    question = [{"role": "user", "content": "Give three tips for staying healthy."}]

    t0 = time.perf_counter()
    run, _, _ = await db.runs.enqueue(1, trigger="cli")
    outcome = await daemon.process(await db.runs.claim(1, run.id))
    assert outcome.published, outcome.run.error or outcome.run.gate_reason
    version = tracker.get(1)
    t_first = None
    async for _ in server.chat(version, question, GenerationOptions(temperature=0, max_tokens=16)):
        t_first = time.perf_counter()
        break
    total = t_first - t0
    job = outcome.run.metrics.get("timings", {})
    result = {"rows": len(rows), "examples": added.created, "n_train": outcome.run.n_train,
              "n_eval": outcome.run.n_eval, "steps": outcome.run.total_steps, "compile": args.compile,
              "queued_to_first_answer_s": round(total, 2),
              "breakdown_s": {**{k: round(v, 2) for k, v in job.items()},
                              "job_process_overhead_s": round(outcome.timings["job_s"] - sum(job.values()), 2),
                              "publish_s": round(outcome.timings["publish_s"], 2),
                              "swap_s": round(outcome.timings["swap_s"], 2),
                              "first_token_s": round(t_first - t0 - sum(outcome.timings.values()), 2)},
              "train_phases_s": {k: round(v, 2) for k, v in outcome.run.metrics.get("train_phases", {}).items()},
              "plan": outcome.run.metrics.get("plan")}
    await tracker.stop()
    await server.close()
    await db.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-files", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ttl-"))
    base = root / "base"
    build_s = build_random_base(args.base_files, base)
    print(f"random-init base built in {build_s:.1f} s (not counted)", flush=True)
    result = asyncio.run(measure(args, base, root / "data"))
    print(json.dumps(result, indent=2))
    print(f"time to learn: {result['queued_to_first_answer_s']:.1f} s for {result['rows']} rows "
          f"(target < 60 s; ratio to target {result['queued_to_first_answer_s'] / 60:.2f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
