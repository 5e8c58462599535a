"""`python -m trainer.job RUN_ID`: one training run, in its own process.

Reads the guild's approved examples, trains a fresh LoRA adapter on all of them, judges it while
it is in memory (recall of taught and rephrased questions against what serves now, drift from the
base on general prompts, golden questions: trainer/gate.py), and — if the gate passes — moves the
adapter from its temporary folder to its final one and records a `ready` model version. The
daemon publishes and swaps.
A kill at any point leaves at most a temporary folder (deleted at the daemon's next start),
never a half version, and the active version untouched.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from serving.notes import version_note_count
from serving.prompting import guild_messages
from storage.db import Database
from storage.records import Example, ModelVersion, TrainingRun
from trainer.base_model import resolve_base_model
from trainer.config import TrainConfig
from trainer.dataset import (TrainingSet, build_training_set, general_instructions, general_questions,
                             preference_rows, taught_conversations)
from trainer.gate import Evidence, GoldenCheck, decide
from trainer.drift import prepare_base_answers
from trainer.kto import (PreferenceSplit, StagedProgress, split_preferences,
                         with_preference_stage)
from trainer.recall import RecallScores, build_probes, example_key, greedy_answers, recall_scores
from trainer.rewording import Rewordings, store_key
from trainer.sft import EvaluateFn, ProgressFn, SFTResult, run_sft, timed
from trainer.distributed import end_process, lead_or_follow
from trainer.launch import rank_overrides

log = logging.getLogger("trainer.job")

MIN_APPROVED = 2
PROGRESS_EVERY_S = 2.0
#: Tokens of a golden question's answer searched for its expected text.
GOLDEN_ANSWER_TOKENS = 64


#: The job process's options travel from the daemon to it (every rank of it) as JSON in this variable.
OPTIONS_ENV = "GUILDTUNE_JOB_OPTIONS"


class JobFailed(Exception):
    """Ends the run as failed with this message (shown to moderators by /model status)."""


@dataclass(frozen=True)
class JobOptions:
    """What a training job reads of the settings (guildtune/runtime.py builds it; no secret is in it)."""

    #: The database: a SQLite path or a postgresql:// URL (what `Database.open` takes)
    db: str
    versions_dir: Path
    models_dir: Path
    base_model: str
    device: str
    #: TrainConfig fields over its defaults: the settings' own, then GUILDTUNE_TRAIN_CONFIG
    train: dict[str, Any]
    gate_tolerance: float
    gate_max_drift: float
    gate_sample: int

    def to_env(self) -> dict[str, str]:
        data = {**asdict(self), "versions_dir": str(self.versions_dir), "models_dir": str(self.models_dir)}
        return {OPTIONS_ENV: json.dumps(data)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "JobOptions":
        """The options the daemon handed this process, with what the launch told every rank (trainer/launch.py)."""
        data = json.loads(environ[OPTIONS_ENV])
        data.update(versions_dir=Path(data["versions_dir"]), models_dir=Path(data["models_dir"]),
                    train={**data["train"], **rank_overrides(environ)})
        return cls(**data)


def version_dirs(versions_dir: Path, run: TrainingRun) -> tuple[Path, Path]:
    """A run's folders: `.run-N.tmp` while training, `run-N` once complete."""
    guild_dir = versions_dir / str(run.guild_id)
    return guild_dir / f".run-{run.id}.tmp", guild_dir / f"run-{run.id}"


@dataclass
class Evaluation:
    """The gate's evidence on a trained candidate, gathered while it is still in memory."""

    candidate: RecallScores
    drift: float
    drift_nll: float
    base_drift_nll: float
    #: what the version it would replace knew: recorded in its metrics, or measured now (base, old versions)
    previous: Evidence | None
    golden: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    #: the run's preference stage (trainer/kto.py), set by `with_preference_stage`
    preference: object = None


def train_config(options: JobOptions, n_examples: int) -> TrainConfig:
    """The run's config for `n_examples` approved examples: defaults, then the options' fields."""
    return TrainConfig.for_dataset(n_examples, **options.train)


def general_rows(cfg: TrainConfig, base_dir: Path, models_dir: Path) -> list:
    """The general mix's conversations: the shipped questions with the base's own answers or the written ones."""
    if cfg.general_share <= 0:
        return []
    if cfg.general_answers == "written":
        return general_instructions()
    return general_instructions(prepare_base_answers(base_dir, cfg, models_dir / "drift", general_questions()))


def training_rows(examples, gs, cfg: TrainConfig, general: list, voted=(), reword=None) -> TrainingSet:
    """Every approved example and every approved liked answer (`voted`: the approved preference examples; a
    👍'd answer is an example the community wrote by voting), `cfg.epochs` passes of each (some asked in other
    words), plus the general mix. An approved disliked answer supersedes the taught example with the same
    question and answer: it is neither trained on nor asked by the gate, whether or not a KTO stage runs.
    `reword`: the base model's rewordings of the questions (trainer/rewording.py `Rewordings`), or None."""
    taught, superseded = taught_conversations([(e.id, e.messages) for e in examples],
                                              [(e.id, e.messages, e.label) for e in voted], gs.system_prompt)
    training = build_training_set(taught, system_prompt=gs.system_prompt,
                                  passes=cfg.epochs,  # the passes follow the examples kept
                                  paraphrase_share=cfg.paraphrase_share, general=general,
                                  general_share=cfg.general_share, superseded=superseded, reword=reword,
                                  notes=cfg.notes)
    liked = len(taught) - len(examples)
    if liked:
        training.note = "; ".join(n for n in (f"{liked} liked answer(s) from votes taught", training.note) if n)
    return training


def preference_split(preferences, gs, cfg: TrainConfig) -> PreferenceSplit:
    """The approved voted answers the KTO stage trains on and the ones the gate holds out (or why no stage)."""
    rows = preference_rows([(e.id, e.messages, e.label) for e in preferences], gs.system_prompt)
    return split_preferences(rows, cfg)


def evidence_of(scores: RecallScores, drift: float | None = None) -> Evidence:
    """The gate's view of `scores`: the same record a version keeps in its metrics."""
    return Evidence.from_metrics({**scores.to_metrics(), "drift": drift})


def previous_evidence(model, tokenizer, probes, active: ModelVersion | None) -> Evidence | None:
    """What the version being replaced knew on these probes.

    The base model (no active version) is asked now through the candidate's base view; an active
    version is judged by what its own gate recorded, or, for a version recorded before the gate kept
    that, asked now with its adapter loaded beside the candidate's.
    """
    from trainer.drift import base_view

    if active is None:
        with base_view(model):
            return evidence_of(recall_scores(model, tokenizer, probes, taught=False))
    recorded = Evidence.from_metrics(active.metrics)
    if recorded is not None:
        return recorded
    try:
        model.load_adapter(active.adapter_path, adapter_name="previous")
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("could not load v%s to compare with (%s); comparing with nothing", active.number, exc)
        return None
    try:
        model.set_adapter("previous")
        return evidence_of(recall_scores(model, tokenizer, probes))
    finally:
        model.set_adapter("default")
        model.delete_adapter("previous")


def evaluate_candidate(model, tokenizer, *, base_dir: Path, training: TrainingSet, gs, active: ModelVersion | None,
                       options: JobOptions, cfg: TrainConfig) -> Evaluation:
    """Recall and paraphrase probes, drift, golden questions, and the previous version's knowledge."""
    from trainer.drift import reference, relative_drift, served_reference

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    plain = build_probes([turns for _, turns in training.examples], options.gate_sample)
    probes = [replace(p, messages=training.as_served(p.messages)) for p in plain]
    candidate = recall_scores(model, tokenizer, probes)
    timings["recall_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain_ref = reference(model, tokenizer, base_dir, gs.system_prompt, options.models_dir / "drift", cfg.max_length,
                          cfg.eval_batch_size)
    ref = served_reference(model, tokenizer, plain_ref, training.as_served, cfg.max_length, cfg.eval_batch_size)
    drift, nll = relative_drift(model, tokenizer, ref, cfg.max_length, cfg.eval_batch_size)
    timings["drift_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # each side asked as it is served: the base, or a version trained without notes, sees none
    previous = previous_evidence(model, tokenizer, probes if version_note_count(active) else plain, active)
    timings["previous_s"] = time.perf_counter() - t0
    golden = []
    if gs.golden_questions:
        t0 = time.perf_counter()
        asked = [training.as_served(guild_messages(gs, q["question"])) for q in gs.golden_questions]
        answers = greedy_answers(model, tokenizer, asked, [GOLDEN_ANSWER_TOKENS] * len(asked))
        golden = [GoldenCheck(q["question"], q["expect"], a) for q, a in zip(gs.golden_questions, answers)]
        timings["golden_s"] = time.perf_counter() - t0
    return Evaluation(candidate, drift, nll, ref.base_nll, previous, golden, timings)


def judge(evaluation: Evaluation, training: TrainingSet, active: ModelVersion | None, options: JobOptions):
    """The gate's decision on the evaluation, and the metrics a run and its version keep."""
    questions = {example_key(turns): turns[-2]["content"] for _, turns in training.examples}
    candidate = evidence_of(evaluation.candidate, evaluation.drift)
    gate = decide(candidate, evaluation.previous, previous_name=f"v{active.number}" if active else "the base model",
                  recall_tolerance=options.gate_tolerance, max_drift=options.gate_max_drift,
                  golden=evaluation.golden, questions=questions,
                  preference=evaluation.preference.check if evaluation.preference is not None else None)
    metrics = {**evaluation.candidate.to_metrics(), "drift": evaluation.drift, "drift_nll": evaluation.drift_nll,
               "base_drift_nll": evaluation.base_drift_nll, "gate": gate.reason,
               "golden": [[g.question, g.ok] for g in evaluation.golden]}
    if evaluation.preference is not None:
        metrics["preference"] = evaluation.preference.to_metrics()
    previous = evaluation.previous
    if previous is not None:
        common = candidate.probed & previous.probed
        metrics["previous"] = {"name": f"v{active.number}" if active else "base",
                               "taught_recall": len(previous.taught_known & common) / len(common) if common else None,
                               "paraphrase_recall": (len(previous.paraphrase_known & common) / len(common)
                                                     if common else None)}
    return gate, metrics


async def run_job(run_id: int, options: JobOptions) -> int:
    """Run `run_id` (claimed by the daemon) to its end; the job process's exit code."""
    db = await Database.open(options.db)
    run = await db.runs.by_id(run_id)
    if run is None or run.status != "running":
        log.error("run %s is not a running run (claim it first)", run_id)
        await db.close()
        return 2
    tmp_dir, final_dir = version_dirs(options.versions_dir, run)
    try:
        await train_and_judge(db, run, options, tmp_dir, final_dir)
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


async def train_and_judge(db: Database, run: TrainingRun, options: JobOptions, tmp_dir: Path, final_dir: Path) -> None:
    """The run, top to bottom: data, base model, training (the candidate judged in memory), gate, version."""
    timings: dict[str, float] = {}
    gs = await db.settings.get(run.guild_id)
    examples = await approved_examples(db, run)
    with timed(timings, "load_base_s"):
        base_dir = await asyncio.to_thread(resolve_base_model, options.base_model, options.models_dir)
    with timed(timings, "dataset_s"):
        cfg = train_config(options, len(examples))
        general = await asyncio.to_thread(general_rows, cfg, base_dir, options.models_dir)
        voted = await db.examples.preferences(run.guild_id)
        reworded_as = store_key(base_dir, cfg)
        reword = Rewordings(base_dir, cfg, await db.examples.rewordings(run.guild_id, reworded_as))
        training = await asyncio.to_thread(training_rows, examples, gs, cfg, general, voted, reword)
        await db.examples.save_rewordings(run.guild_id, reworded_as, reword.made)
        preferences = preference_split(voted, gs, cfg)
        cfg = cfg.with_overrides(num_epochs=1)  # the passes are in the rows
    await db.runs.update(run.guild_id, run.id, n_train=len(training.examples), n_eval=0)
    active = await db.versions.active(run.guild_id)

    cancel = {"flag": False}
    on_progress = progress_writer(db, run, asyncio.get_running_loop(), cancel)
    evaluate = functools.partial(evaluate_candidate, base_dir=base_dir, training=training, gs=gs, active=active,
                                 options=options, cfg=cfg)
    with timed(timings, "train_s"):
        result = await train_candidate(base_dir, training, preferences, cfg, tmp_dir, evaluate, on_progress,
                                       should_cancel=lambda: cancel["flag"])
    if cancel["flag"] or await db.runs.cancel_requested(run.guild_id, run.id):
        await db.runs.finish(run.guild_id, run.id, "cancelled", error="cancelled by a moderator or shutdown")
        return
    await db.runs.update(run.guild_id, run.id, loss_history=on_progress.history)

    gate, metrics = judge(result.evaluation, training, active, options)
    metrics.update(run_metrics(result, training, timings))
    await db.runs.update(run.guild_id, run.id, metrics=metrics)
    if not gate.passed:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        await db.runs.finish(run.guild_id, run.id, "gated", gate_reason=gate.reason, metrics=metrics)
        return
    await commit_version(db, run, tmp_dir, final_dir, base_dir, metrics, len(examples))


async def approved_examples(db: Database, run: TrainingRun) -> list[Example]:
    """The guild's approved examples, or JobFailed when there are too few to train on."""
    examples = await db.examples.approved(run.guild_id)
    if len(examples) < MIN_APPROVED:
        raise JobFailed(f"training needs at least {MIN_APPROVED} approved examples; this server has "
                        f"{len(examples)}. Approve more with /review or import some.")
    return examples


async def train_candidate(base_dir: Path, training: TrainingSet, preferences: PreferenceSplit, cfg: TrainConfig,
                          tmp_dir: Path, evaluate: EvaluateFn, on_progress: ProgressFn,
                          should_cancel: Callable[[], bool]) -> SFTResult:
    """SFT into a fresh `tmp_dir` (then KTO on the voted answers when there are enough), judged by `evaluate`."""
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    # after SFT, before the gate: KTO on the approved voted answers when there are enough of them
    progress = StagedProgress(on_progress)  # one progress bar: SFT's steps, then the stage's
    evaluate = with_preference_stage(evaluate, preferences, cfg, tmp_dir, progress=progress,
                                     should_cancel=should_cancel)
    result = await asyncio.to_thread(run_sft, base_dir, training.train, cfg, tmp_dir, on_progress=progress.sft,
                                     should_cancel=should_cancel, evaluate=evaluate)
    log.info("trained %d steps: %s", result.steps, ", ".join(f"{k} {v:.1f}s" for k, v in result.phases.items()))
    return result


def run_metrics(result: SFTResult, training: TrainingSet, timings: dict[str, float]) -> dict:
    """What a run records beside the gate's evidence: the training's figures, its timings and its plan."""
    return {"train_loss": result.train_loss, "steps": result.steps, "n_train": len(training.examples),
            "n_rows": len(training.train), "n_paraphrased": training.n_paraphrased,
            "n_general": training.n_general, "n_reworded": training.n_reworded, "note": training.note,
            "notes": training.notes_per_question,
            "timings": {**timings, **result.evaluation.timings}, "train_phases": result.phases, "plan": result.plan}


def progress_writer(db: Database, run: TrainingRun, loop: asyncio.AbstractEventLoop, cancel: dict):
    """The trainer's progress callback: writes step/loss/ETA to the run row (at most every
    PROGRESS_EVERY_S) from the training thread, and picks up a cancel request on the way."""
    history: list[list[float]] = []
    last_write = [0.0]

    async def write(step, total, loss, eta):
        await db.runs.update(run.guild_id, run.id, step=step, total_steps=total, loss=loss, eta_s=eta,
                             loss_history=history)
        cancel["flag"] = await db.runs.cancel_requested(run.guild_id, run.id)

    def on_progress(step: int, total: int, loss: float | None, eta_s: float | None) -> None:
        if loss is not None:
            history.append([step, float(loss)])
        now = time.monotonic()
        if now - last_write[0] >= PROGRESS_EVERY_S or step >= total:
            last_write[0] = now
            asyncio.run_coroutine_threadsafe(write(step, total, loss, eta_s), loop).result()

    on_progress.history = history
    return on_progress


async def commit_version(db: Database, run: TrainingRun, tmp_dir: Path, final_dir: Path, base_dir: Path,
                         metrics: dict, n_examples: int) -> None:
    """Move the adapter to its final folder, then record the `ready` version (it exists only once complete)."""
    (tmp_dir / "guildtune_version.json").write_text(json.dumps(
        {"run_id": run.id, "guild_id": run.guild_id, "base_model": str(base_dir), "metrics": metrics}))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    await db.versions.create(run.guild_id, run_id=run.id, adapter_path=str(final_dir), base_model=str(base_dir),
                             metrics=metrics, n_examples=n_examples)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m trainer.job RUN_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s job %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from serving.quiet import quiet_libraries

    if OPTIONS_ENV not in os.environ:
        print(f"{OPTIONS_ENV} is not set: the trainer daemon starts this process with it (`guildtune trainer`, "
              f"`guildtune train`); it is not run by hand.", file=sys.stderr)
        return 2
    quiet_libraries()
    options = JobOptions.from_env(os.environ)
    # multi-GPU hook (trainer/distributed.py): one process runs the job; under `accelerate launch` rank 0
    # runs it and the other ranks only train what rank 0 hands them
    return lead_or_follow(lambda: asyncio.run(run_job(int(args[0]), options)), device=options.device)


if __name__ == "__main__":
    end_process(main())
