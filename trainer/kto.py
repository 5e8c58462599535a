"""The preference stage of a run: votes under answers, learned with TRL's KTO after SFT.

An answer the community voted up or down (storage: `ExampleRepository.add_from_votes`) and a
moderator approved is an unpaired preference example: the conversation asked, the answer, and
whether it was liked. KTO (`trl.KTOTrainer`) learns exactly that shape. After SFT, when the guild
has `min_preference_examples` of them with both labels, the SFT adapter goes on training with KTO
against a reference that is the SFT adapter itself: TRL copies the trained adapter into a second,
frozen adapter named "ref" (PEFT's disabled adapter would be the base model, not the SFT model).
That copy costs one adapter's weights (`ref_adapter_bytes` in the run's metrics; a few MB for a
rank-16 adapter of the 270M base, against ~1 GB of fp32 base weights), less than precomputing
would save, so the copy is used.

Evidence for the gate: `preference_holdout` examples of each label, the same every run (the
smallest hash of their key), are kept out of the KTO stage; their liked-minus-disliked
log-likelihood margin is measured on the SFT adapter before the stage and on the result after it,
in memory (`trainer.gate.PreferenceCheck`). The desirable/undesirable loss weights balance the
labels (TRL's advice: weight x count about equal for both).

Progress and cancellation are SFT's (`trainer.sft`'s callback): `StagedProgress` counts the stage's
steps on after SFT's on the run's one progress bar, and the run's `should_cancel` stops the stage
after the current step; a cancelled stage writes nothing and the run is not evaluated.

Rows are tokenized here with the project's encoding (serving/chat_encoding.py via
`trainer.sft.encode_conversation`), so text a member typed never becomes a control token; TRL is
handed the ids (`_PretokenizedKTOTrainer`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainer.config import TrainConfig
from trainer.dataset import PreferenceRow
from trainer.gate import PreferenceCheck
from trainer.sft import ProgressFn, StepWatch, encode_conversation, mean_token_nll, progress_callback

log = logging.getLogger("trainer.kto")

Conversation = list[dict[str, str]]


@dataclass
class PreferenceSplit:
    """What the KTO stage trains on and what the gate's preference check holds out, or why no stage."""

    train: list[PreferenceRow]
    held_out: list[PreferenceRow]
    #: None when the stage runs; else the sentence saying why it does not
    skipped: str | None = None


def _holdout_rank(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"guildtune-preference-holdout:{key}".encode()).digest()[:8], "big")


def split_preferences(rows: Sequence[PreferenceRow], cfg: TrainConfig) -> PreferenceSplit:
    """Hold out `cfg.preference_holdout` rows of each label (smallest key hash) if each label keeps one to train.

    The stage is skipped below `min_preference_examples` or without both labels."""
    n_liked = sum(r.desirable for r in rows)
    n_disliked = len(rows) - n_liked
    if len(rows) < cfg.min_preference_examples:
        return PreferenceSplit([], [], f"{len(rows)} approved voted answer(s); the preference stage starts at "
                                       f"{cfg.min_preference_examples} (min_preference_examples)")
    if not n_liked or not n_disliked:
        return PreferenceSplit([], [], f"voted answers are all {'liked' if n_liked else 'disliked'}; the "
                                       "preference stage needs liked and disliked ones")
    held_out: list[PreferenceRow] = []
    for desirable, count in ((True, n_liked), (False, n_disliked)):
        wanted = min(cfg.preference_holdout, count - 1)
        same = sorted((r for r in rows if r.desirable == desirable), key=lambda r: _holdout_rank(r.key))
        held_out.extend(same[:wanted])
    if len({r.desirable for r in held_out}) < 2:
        held_out = []  # a margin needs both labels: train on everything, no preference check
    out = {r.example_id for r in held_out}
    return PreferenceSplit([r for r in rows if r.example_id not in out], held_out)


def label_weights(labels: Sequence[bool]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for rows with these labels (True: liked): the rarer
    label's loss weighted up so weight x count is equal."""
    n_liked = sum(labels)
    n_disliked = len(labels) - n_liked
    if not n_liked or not n_disliked or n_liked == n_disliked:
        return 1.0, 1.0
    return (n_disliked / n_liked, 1.0) if n_liked < n_disliked else (1.0, n_liked / n_disliked)


def tokenized_rows(tokenizer: Any, rows: Sequence[PreferenceRow], max_length: int):
    """`prompt_ids`, `completion_ids` (the answer and its end of turn), `label`, as KTOTrainer reads them.

    Rows whose prompt alone fills `max_length` are dropped (nothing of the answer would be left)."""
    from datasets import Dataset

    prompts, completions, labels = [], [], []
    for row in rows:
        encoded = encode_conversation(tokenizer, row.conversation)
        marked = [i for i, t in enumerate(encoded["labels"]) if t != -100]
        if not marked or marked[0] >= max_length:
            continue
        first, last = marked[0], marked[-1]
        prompts.append(encoded["input_ids"][:first])
        completions.append(encoded["input_ids"][first:last + 1])
        labels.append(row.desirable)
    if not prompts:
        raise ValueError(f"no preference example fits max_length={max_length} tokens with its answer")
    return Dataset.from_dict({"prompt_ids": prompts, "completion_ids": completions, "label": labels})


def answer_loglik(model: Any, tokenizer: Any, rows: Sequence[PreferenceRow], max_length: int) -> dict[str, float]:
    """{row key: mean log-likelihood per answer token} under `model` (the loss yardstick, `mean_token_nll`)."""
    out = {}
    for row in rows:
        nll, n = mean_token_nll(model, tokenizer, {"messages": [row.conversation]}, max_length, 1)
        if n:
            out[row.key] = -nll
    return out


def margin(loglik: dict[str, float], rows: Sequence[PreferenceRow]) -> float | None:
    """Mean log-likelihood of the liked answers minus that of the disliked ones (None without both)."""
    liked = [loglik[r.key] for r in rows if r.desirable and r.key in loglik]
    disliked = [loglik[r.key] for r in rows if not r.desirable and r.key in loglik]
    if not liked or not disliked:
        return None
    return sum(liked) / len(liked) - sum(disliked) / len(disliked)


def _pretokenized_trainer_class():
    from trl import KTOTrainer

    class _PretokenizedKTOTrainer(KTOTrainer):
        """KTOTrainer on rows tokenized by `tokenized_rows`: only the KL completions are added.

        KTO estimates its KL term from mismatched pairs; like TRL, each row's KL completion is the
        previous row's completion within its batch (rotated by one), the batches being sequential."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            def rotate(batch):
                completions = batch["completion_ids"]
                return {"KL_completion_ids": [completions[-1], *completions[:-1]]}

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    return _PretokenizedKTOTrainer


@dataclass
class StagedProgress:
    """One progress bar over a run's two stages: SFT's steps as SFT reports them, then the preference
    stage's counted on after them (the total grows by the stage's steps once it starts). The stage
    reports no loss: KTO's loss is another quantity than SFT's (its curve is in the stage's metrics)."""

    report: ProgressFn | None
    sft_total: int = 0

    def sft(self, step: int, total: int, loss: float | None, eta_s: float | None) -> None:
        self.sft_total = total
        if self.report is not None:
            self.report(step, total, loss, eta_s)

    def preference(self, step: int, total: int, loss: float | None, eta_s: float | None) -> None:
        if self.report is not None:
            self.report(self.sft_total + step, self.sft_total + total, None, eta_s)


@dataclass
class KTOResult:
    steps: int
    train_loss: float | None
    desirable_weight: float
    undesirable_weight: float
    n_desirable: int
    n_undesirable: int
    #: bytes of the frozen copy of the SFT adapter that served as the reference, and of the adapter itself
    ref_adapter_bytes: int
    adapter_bytes: int
    duration_s: float
    #: peak CUDA memory of the stage (None on a CPU)
    peak_cuda_bytes: int | None = None
    #: the stage's planned steps; `steps` is fewer when it was cancelled
    total_steps: int = 0
    cancelled: bool = False
    #: (step, KTO loss) at each logged step
    loss_history: list[tuple[int, float]] = field(default_factory=list)


def _adapter_bytes(model: Any, name: str) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n)


def train_kto(model: Any, tokenizer: Any, rows: Sequence[PreferenceRow], cfg: TrainConfig, work_dir: str | Path,
              *, on_progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None
              ) -> KTOResult:
    """Train the PEFT model's "default" adapter with KTO on `rows`, the reference a frozen copy of it.

    `model` is changed in place (and left in eval mode with only "default" loaded); nothing is
    written outside `work_dir` (the Trainer's scratch folder, removed when empty). `on_progress`
    and `should_cancel` work as in `run_sft`: (step, total, loss, ETA) at each logged step, and
    the stage stops after the step during which `should_cancel()` turned true (`cancelled`)."""
    import torch
    from transformers import PrinterCallback
    from trl import KTOConfig

    from trainer.speed import checkpointing_arg_names

    started = time.perf_counter()
    for name, param in model.named_parameters():  # an adapter loaded for evaluation comes frozen
        param.requires_grad_("lora_" in name and ".default." in name)
    dataset = tokenized_rows(tokenizer, rows, cfg.max_length)
    desirable_weight, undesirable_weight = label_weights(dataset["label"])  # the rows that fit, as trained
    batch = max(2, min(cfg.kto_batch_size, len(dataset)))
    steps = math.ceil(len(dataset) / batch) * cfg.kto_epochs
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    device = next(model.parameters()).device
    bf16 = model.get_base_model().dtype == torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    work_dir = Path(work_dir)
    args = KTOConfig(
        output_dir=str(work_dir), max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        learning_rate=cfg.kto_learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=cfg.max_grad_norm, beta=cfg.kto_beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, max_length=cfg.max_length, bf16=bf16, fp16=False,
        use_cpu=device.type == "cpu", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to=cfg.report_to, seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        disable_tqdm=True, remove_unused_columns=False,
        **{checkpointing_arg_names()[0]: False})  # KTOConfig's default is on; the stage is small
    watch = StepWatch()
    trainer = _pretokenized_trainer_class()(
        model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[progress_callback(steps, on_progress, should_cancel, watch)])
    trainer.remove_callback(PrinterCallback)
    ref_bytes = _adapter_bytes(model, "ref")
    output = trainer.train()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter("default")
    model.eval()
    if work_dir.exists() and not any(work_dir.iterdir()):
        work_dir.rmdir()
    n_liked = sum(dataset["label"])
    return KTOResult(steps=trainer.state.global_step, train_loss=float(output.training_loss) if steps else None,
                     desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                     n_desirable=n_liked, n_undesirable=len(dataset) - n_liked, ref_adapter_bytes=ref_bytes,
                     adapter_bytes=_adapter_bytes(model, "default"), duration_s=time.perf_counter() - started,
                     peak_cuda_bytes=peak, total_steps=steps, cancelled=watch.cancelled, loss_history=watch.history)


@dataclass
class PreferenceStage:
    """What the preference stage did in a run (the run's metrics keep `to_metrics()`)."""

    ran: bool
    note: str
    kto: KTOResult | None = None
    #: stopped by the run's `should_cancel`: the adapter was not rewritten and nothing was measured after
    cancelled: bool = False
    held_out: list[PreferenceRow] = field(default_factory=list)
    sft_loglik: dict[str, float] = field(default_factory=dict)
    kto_loglik: dict[str, float] = field(default_factory=dict)

    @property
    def check(self) -> PreferenceCheck | None:
        """The gate's evidence: margins on the held-out voted answers, SFT only vs after KTO."""
        before, after = margin(self.sft_loglik, self.held_out), margin(self.kto_loglik, self.held_out)
        if not self.ran or before is None or after is None:
            return None
        return PreferenceCheck(len(self.held_out), sft_margin=before, candidate_margin=after)

    def to_metrics(self) -> dict[str, Any]:
        check = self.check
        out: dict[str, Any] = {"ran": self.ran, "note": self.note, "cancelled": self.cancelled}
        if check is not None:
            out.update(sft_margin=check.sft_margin, candidate_margin=check.candidate_margin)
        if self.held_out:  # per example: key, liked?, log-likelihood SFT only → after KTO
            out["held_out"] = [[r.key, r.desirable, self.sft_loglik.get(r.key), self.kto_loglik.get(r.key)]
                               for r in self.held_out]
        if self.kto is not None:
            k = self.kto
            out.update(steps=k.steps, train_loss=k.train_loss, n_desirable=k.n_desirable,
                       n_undesirable=k.n_undesirable, desirable_weight=k.desirable_weight,
                       undesirable_weight=k.undesirable_weight, ref_adapter_bytes=k.ref_adapter_bytes,
                       adapter_bytes=k.adapter_bytes, duration_s=k.duration_s, peak_cuda_bytes=k.peak_cuda_bytes,
                       total_steps=k.total_steps, loss_history=k.loss_history)
        return out


def run_preference_stage(model: Any, tokenizer: Any, split: PreferenceSplit, cfg: TrainConfig,
                         adapter_dir: str | Path, *, on_progress: ProgressFn | None = None,
                         should_cancel: Callable[[], bool] | None = None) -> PreferenceStage:
    """KTO on the SFT adapter in memory, measured before and after on the held-out rows; the adapter
    in `adapter_dir` is rewritten with the result. A skipped split changes nothing, nor does a stage
    cancelled (`should_cancel`, checked before it starts and after each step)."""
    if split.skipped is not None:
        return PreferenceStage(False, split.skipped)
    if should_cancel is not None and should_cancel():
        return PreferenceStage(False, "cancelled before the preference stage", cancelled=True)
    stage = PreferenceStage(True, "", held_out=list(split.held_out))
    stage.sft_loglik = answer_loglik(model, tokenizer, split.held_out, cfg.max_length)
    stage.kto = train_kto(model, tokenizer, split.train, cfg, Path(adapter_dir) / "kto_state",
                          on_progress=on_progress, should_cancel=should_cancel)
    if stage.kto.cancelled:
        stage.cancelled = True
        stage.note = f"cancelled after {stage.kto.steps} of {stage.kto.total_steps} KTO steps"
        return stage
    stage.kto_loglik = answer_loglik(model, tokenizer, split.held_out, cfg.max_length)
    model.save_pretrained(str(adapter_dir))
    stage.note = (f"KTO on {len(split.train)} voted answer(s) ({stage.kto.n_desirable} liked, "
                  f"{stage.kto.n_undesirable} disliked), {stage.kto.steps} steps; "
                  f"{len(split.held_out)} held out for the gate")
    return stage


def with_preference_stage(evaluate: Callable[[Any, Any], Any], split: PreferenceSplit, cfg: TrainConfig,
                          adapter_dir: str | Path, *, progress: StagedProgress | None = None,
                          should_cancel: Callable[[], bool] | None = None) -> Callable[[Any, Any], Any]:
    """An `evaluate(model, tokenizer)` for `run_sft` that first runs the preference stage on the
    trained adapter; the evaluation it returns carries the stage as `.preference`. The stage reports
    to `progress.preference` (give `run_sft` `progress.sft`) and stops on `should_cancel`; a
    cancelled stage returns None without evaluating (the run is over)."""

    def stage_then_evaluate(model: Any, tokenizer: Any) -> Any:
        stage = run_preference_stage(model, tokenizer, split, cfg, adapter_dir,
                                     on_progress=progress.preference if progress is not None else None,
                                     should_cancel=should_cancel)
        if stage.cancelled:
            return None
        evaluation = evaluate(model, tokenizer)
        evaluation.preference = stage
        return evaluation

    return stage_then_evaluate
