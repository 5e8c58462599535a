"""`python -m trainer.job RUN_ID`: one training run, in its own process.

Reads the guild's approved examples, trains a fresh LoRA adapter on all of them, evaluates it
against what serves now, and — if the gate passes — moves the adapter from its temporary
folder to its final one and records a `ready` model version. The daemon publishes and swaps.
A kill at any point leaves at most a temporary folder (deleted at the daemon's next start),
never a half version, and the active version untouched.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from guildtune.settings import Settings, load_settings
from storage.db import Database
from storage.records import ModelVersion, TrainingRun
from trainer.distributed import lead_or_follow

log = logging.getLogger("trainer.job")

MIN_APPROVED = 2
PROGRESS_EVERY_S = 2.0


class JobFailed(Exception):
    """Ends the run as failed with this message (shown to moderators by /model status)."""


def version_dirs(settings: Settings, run: TrainingRun) -> tuple[Path, Path]:
    guild_dir = settings.versions_dir / str(run.guild_id)
    return guild_dir / f".run-{run.id}.tmp", guild_dir / f"run-{run.id}"


async def golden_checks(settings, base_dir: Path, adapter_dir: Path, run: TrainingRun, questions, system_prompt):
    """Ask the candidate each golden question through the in-process server (greedy decoding)."""
    from serving.local_server import LocalServer
    from serving.protocol import GenerationOptions
    from trainer.gate import GoldenCheck

    server = LocalServer(str(base_dir), device=settings.device)
    candidate = ModelVersion(id=-run.id, guild_id=run.guild_id, number=0, run_id=run.id, tag=None,
                             adapter_path=str(adapter_dir), base_model=str(base_dir), metrics={},
                             status="ready", n_examples=0, created_at=time.time())
    checks = []
    try:
        await server.publish(candidate)
        for q in questions:
            messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": q["question"]}]
            pieces = [p async for p in server.chat(candidate, messages, GenerationOptions(temperature=0.0,
                                                                                       max_tokens=64))]
            checks.append(GoldenCheck(q["question"], q["expect"], "".join(pieces)))
    finally:
        await server.close()
    return checks


async def run_job(run_id: int, settings: Settings) -> int:
    from trainer.base_model import resolve_base_model
    from trainer.config import TrainConfig
    from trainer.dataset import build_split
    from trainer.gate import decide
    from trainer.sft import eval_loss, run_sft

    db = await Database.open(settings.db_path)
    run = await db.runs.by_id(run_id)
    if run is None or run.status != "running":
        log.error("run %s is not a running run (claim it first)", run_id)
        await db.close()
        return 2
    tmp_dir, final_dir = version_dirs(settings, run)
    loop = asyncio.get_running_loop()
    cancel = {"flag": False}
    timings: dict[str, float] = {}
    try:
        gs = await db.settings.get(run.guild_id)
        examples = await db.examples.approved(run.guild_id)
        if len(examples) < MIN_APPROVED:
            raise JobFailed(f"training needs at least {MIN_APPROVED} approved examples; this server has "
                            f"{len(examples)}. Approve more with /review or import some.")
        t0 = time.perf_counter()
        base_dir = await asyncio.to_thread(resolve_base_model, settings.base_model, settings.models_dir)
        timings["load_base_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        split = build_split([(e.id, e.messages) for e in examples], system_prompt=gs.system_prompt)
        timings["dataset_s"] = time.perf_counter() - t0
        await db.runs.update(run.guild_id, run.id, n_train=len(split.train), n_eval=len(split.eval))

        cfg = TrainConfig.for_dataset(len(split.train), max_steps=settings.train_max_steps,
                                      device=settings.device, qlora=settings.qlora,
                                      memory_cap_gib=settings.memory_cap_gib, compile=settings.train_compile,
                                      report_to=settings.report_to)
        history: list[list[float]] = []
        last_write = [0.0]

        async def write_progress(step, total, loss, eta):
            await db.runs.update(run.guild_id, run.id, step=step, total_steps=total, loss=loss, eta_s=eta,
                                 loss_history=history)
            cancel["flag"] = await db.runs.cancel_requested(run.guild_id, run.id)

        def on_progress(step: int, total: int, loss: float | None, eta_s: float | None) -> None:
            if loss is not None:
                history.append([step, float(loss)])
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_EVERY_S or step >= total:
                last_write[0] = now
                asyncio.run_coroutine_threadsafe(write_progress(step, total, loss, eta_s), loop).result()

        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        result = await asyncio.to_thread(run_sft, base_dir, split.train, split.eval, cfg, tmp_dir,
                                         on_progress=on_progress, should_cancel=lambda: cancel["flag"])
        timings["train_s"] = time.perf_counter() - t0
        log.info("trained %d steps: %s", result.steps,
                 ", ".join(f"{k} {v:.1f}s" for k, v in result.phases.items()))
        if cancel["flag"] or await db.runs.cancel_requested(run.guild_id, run.id):
            await db.runs.finish(run.guild_id, run.id, "cancelled", error="cancelled by a moderator or shutdown")
            return 0
        await db.runs.update(run.guild_id, run.id, loss_history=history)

        t0 = time.perf_counter()
        active = await db.versions.active(run.guild_id)
        baseline = await asyncio.to_thread(eval_loss, base_dir, active.adapter_path if active else None,
                                           split.eval, cfg)
        golden = []
        if gs.golden_questions:
            golden = await golden_checks(settings, base_dir, tmp_dir, run, gs.golden_questions, gs.system_prompt)
        timings["eval_s"] = time.perf_counter() - t0
        gate = decide(result.eval_loss, baseline, tolerance=settings.gate_tolerance,
                      baseline_name=f"v{active.number}" if active else "the base model",
                      golden=golden, split_note=split.note)
        metrics = {"eval_loss": result.eval_loss, "baseline_eval_loss": baseline, "train_loss": result.train_loss,
                   "steps": result.steps, "n_train": len(split.train), "n_eval": len(split.eval),
                   "gate": gate.reason, "golden": [[g.question, g.ok] for g in golden], "timings": timings,
                   "train_phases": result.phases, "plan": result.plan}
        await db.runs.update(run.guild_id, run.id, eval_loss=result.eval_loss, baseline_eval_loss=baseline,
                             metrics=metrics)
        if not gate.passed:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            await db.runs.finish(run.guild_id, run.id, "gated", gate_reason=gate.reason, metrics=metrics)
            return 0
        (tmp_dir / "guildtune_version.json").write_text(json.dumps(
            {"run_id": run.id, "guild_id": run.guild_id, "base_model": str(base_dir), "metrics": metrics}))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp_dir, final_dir)  # the version exists only once it is complete
        await db.versions.create(run.guild_id, run_id=run.id, adapter_path=str(final_dir),
                                 base_model=str(base_dir), metrics=metrics, n_examples=len(examples))
        return 0
    except JobFailed as exc:
        await db.runs.finish(run.guild_id, run.id, "failed", error=str(exc))
        return 1
    except Exception as exc:
        log.exception("run %s failed", run.id)
        await db.runs.finish(run.guild_id, run.id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    finally:
        if tmp_dir.exists() and not final_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        await db.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m trainer.job RUN_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s job %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trainer.quiet import quiet_libraries

    quiet_libraries()
    settings = load_settings()
    # multi-GPU hook (trainer/distributed.py): one process runs the job; under `accelerate launch` rank 0
    # runs it and the other ranks only train what rank 0 hands them
    return lead_or_follow(lambda: asyncio.run(run_job(int(args[0]), settings)), device=settings.device)


if __name__ == "__main__":
    sys.exit(main())
