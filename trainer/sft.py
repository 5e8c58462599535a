"""LoRA SFT of one run (TRL `SFTTrainer` + PEFT), and the loss yardstick evaluations share.

`run_sft` trains a fresh adapter on the run's rows with loss on assistant tokens only (the chat
template's `{% generation %}` span: each answer and its end-of-turn token), reports progress and
honours cancellation through a `TrainerCallback`, writes the PEFT adapter and the tokenizer into
`output_dir` (nothing outside it), and hands the trained model, still in memory, to the caller's
`evaluate` (the gate's recall and drift checks, trainer/job.py).

`mean_token_nll` is the one loss yardstick (drift, `eval_loss`): the mean negative log-likelihood
per assistant token, computed only at labelled positions (the logits of a 262k-word vocabulary are
never materialised for the whole sequence).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainer import distributed
from trainer.config import TrainConfig
from trainer.plan import Machine, Plan, plan

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("trainer.sft")

ProgressFn = Callable[[int, int, "float | None", "float | None"], None]
#: Judges a trained adapter in memory: (PEFT model, tokenizer) -> anything the caller keeps.
EvaluateFn = Callable[[Any, Any], Any]
#: Upper bound on the logits one eval forward pass may hold (bytes); batches are sized to fit.
EVAL_LOGITS_BUDGET = 512 * 2**20
#: The attention kernel every version is judged with: the one the in-process server answers with (transformers'
#: default), so the gate hears what /ask says. Gemma trains with the eager kernel; on the CPU SDPA also generates
#: the gate's answers faster (60 probes with notes: 42 s against 54-70 s, bench/RESULTS.md "Session 10").
EVAL_ATTENTION = "sdpa"


@dataclass
class SFTResult:
    """What a run produced. `train_loss` is the mean NLL per assistant token over the run."""

    train_loss: float | None
    loss_history: list[tuple[int, float]]
    steps: int
    total_steps: int
    n_train: int
    cancelled: bool = False
    duration_s: float = 0.0
    plan: dict = field(default_factory=dict)
    #: seconds of each phase: prepare (load + tokenize), train_loop, save, candidate_eval
    phases: dict = field(default_factory=dict)
    #: what `run_sft(evaluate=...)` returned for the trained adapter
    evaluation: Any = None


# --- tokenizer and labels -------------------------------------------------------------------------

def load_tokenizer(model_dir: str | Path, model_type: str | None = None, name: str | None = None):
    """The model's tokenizer with a training chat template (generation markers) and a pad token ≠ EOS.

    Loaded once per folder and process: a job trains and evaluates twice with the same tokenizer, and
    Gemma's 262k-token one takes seconds to load."""
    return _load_tokenizer(str(Path(model_dir).resolve()), model_type, name)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str, model_type: str | None, name: str | None):
    from transformers import AutoConfig, AutoTokenizer

    from trainer.chat_template import check_assistant_mask, training_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if model_type is None:
        model_type = AutoConfig.from_pretrained(str(model_dir)).model_type
    tokenizer.chat_template = training_chat_template(tokenizer, model_type, name or str(model_dir))
    check_assistant_mask(tokenizer)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        for candidate in ("<pad>", "<|finetune_right_pad_id|>", "<|pad|>", "[PAD]", "<|endoftext|>"):
            if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            log.warning("%s has no pad token distinct from EOS; padding with EOS (labels stay masked)", model_dir)
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize_conversations(ds: "Dataset", tokenizer, max_length: int) -> "Dataset":
    """`messages` → `input_ids` + `labels` (assistant tokens only), dropping rows with nothing to learn.

    TRL would do the same (a test holds the labels equal), but its `Dataset.map` hashes the tokenizer
    for the datasets cache: ~15 s for Gemma's 262k-token vocabulary, longer than the training itself
    on a GPU. Tokenizing here first makes TRL take the data as it is.
    """
    from datasets import Dataset

    rows = [encode_conversation(tokenizer, m, max_length) for m in ds["messages"]]
    rows = [r for r in rows if any(t != -100 for t in r["labels"])]
    if not rows:
        raise ValueError("no training conversation has an assistant turn to learn from")
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def encode_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels of one conversation: assistant tokens labelled, everything else -100.

    The same rule TRL applies with `assistant_only_loss=True` (a test holds them equal), through the
    encoding `/ask` uses too (serving/chat_encoding.py): text a member typed never becomes a control
    token, so no example can forge a turn.
    """
    from serving.chat_encoding import encode_chat

    out = encode_chat(tokenizer, messages)
    ids, mask = out.input_ids, out.assistant_mask
    labels = [tok if m else -100 for tok, m in zip(ids, mask)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


# --- model loading --------------------------------------------------------------------------------

def _model_type(model_dir: str | Path) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir)).model_type


def plan_for(base_dir: str | Path, cfg: TrainConfig, *, lengths: list[int] | None = None,
             total_steps: int | None = None) -> Plan:
    """The machine-dependent choices (trainer/plan.py) for this base model on this machine."""
    from transformers import AutoConfig

    rank = distributed.current()  # multi-GPU hook: under FSDP each GPU holds 1/N of the weights
    machine = Machine.detect(weight_shards=rank.world_size if rank.fsdp else 1)
    return plan(cfg, AutoConfig.from_pretrained(str(base_dir)), machine, lengths=lengths, total_steps=total_steps)


def load_model(base_dir: str | Path, plan: Plan):
    """The base model in the plan's dtype (4-bit nf4 with QLoRA) on the plan's device."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.packing import ATTN_IMPLEMENTATION, register_varlen_attention

    if plan.attn_implementation == ATTN_IMPLEMENTATION:
        register_varlen_attention()
    kwargs: dict = {"dtype": torch.bfloat16 if plan.bf16 else torch.float32,
                    "attn_implementation": plan.attn_implementation}
    if plan.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    if plan.device == "cuda" and distributed.current().cuda_device_map() is not None:
        kwargs["device_map"] = distributed.current().cuda_device_map()  # multi-GPU hook: this rank's GPU
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    if plan.device == "cpu":
        model.to("cpu")
    return model


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM")


# --- progress and cancellation --------------------------------------------------------------------

@dataclass
class StepWatch:
    """What the run's callback records: the loss history, whether a cancel stopped it, when steps ended."""

    history: list[tuple[int, float]] = field(default_factory=list)
    cancelled: bool = False
    t0: float = field(default_factory=time.perf_counter)
    step_ends: list[float] = field(default_factory=list)

    def step_phases(self) -> dict[str, float]:
        """Seconds to the first step's end, and the median step after it."""
        if not self.step_ends:
            return {}
        phases = {"first_step_s": self.step_ends[0] - self.t0}
        gaps = sorted(b - a for a, b in zip(self.step_ends, self.step_ends[1:]))
        if gaps:
            phases["median_step_s"] = gaps[len(gaps) // 2]
        return phases


def progress_callback(total_steps: int, on_progress: ProgressFn | None, should_cancel: Callable[[], bool] | None,
                       watch: StepWatch):
    from transformers import TrainerCallback

    class ProgressAndCancel(TrainerCallback):
        """Reports (step, total, loss, ETA) at each logged loss and stops training when asked to."""

        def on_train_begin(self, args, st, control, **kwargs):
            watch.t0 = time.perf_counter()

        def on_log(self, args, st, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or st.global_step == 0:
                return
            loss = float(logs["loss"])
            watch.history.append((st.global_step, loss))
            elapsed = time.perf_counter() - watch.t0
            eta = elapsed / st.global_step * max(0, total_steps - st.global_step)
            if on_progress is not None:
                on_progress(st.global_step, total_steps, loss, eta)
            self.on_step_end(args, st, control)  # a cancel noticed while reporting stops at this step

        def on_step_end(self, args, st, control, **kwargs):
            if kwargs:  # a real step end (not the call from on_log): keep its time for the phase report
                watch.step_ends.append(time.perf_counter())
            if should_cancel is not None and should_cancel():
                watch.cancelled = True
                control.should_training_stop = True

    return ProgressAndCancel()


@contextmanager
def timed(phases: dict[str, float], name: str):
    """Add the block's wall-clock seconds to `phases[name]`."""
    mark = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - mark


# --- training -------------------------------------------------------------------------------------

@dataclass
class PreparedRun:
    """An SFTTrainer ready to train (its `train_dataset` is tokenized, with labels), and what it was built from."""

    trainer: object
    tokenizer: object
    plan: Plan
    total_steps: int


def prepare_trainer(base_model_dir: str | Path, train_ds: "Dataset", cfg: TrainConfig, work_dir: str | Path,
                    callbacks: list | tuple = ()) -> PreparedRun:
    """Load tokenizer + model per the machine's plan and build the TRL SFTTrainer with a fresh LoRA adapter.

    `train_ds` has a `messages` column (loss on assistant tokens), or is pre-tokenized (`input_ids`,
    optional `labels`/`assistant_masks`; benchmarks feed the anchors' exact token rows this way).
    """
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from trainer.speed import install, sample_lengths, sft_overrides

    rank = distributed.current()
    cfg = cfg.for_processes(rank.world_size)  # multi-GPU hook: per-GPU share of the global batch
    total_steps = cfg.total_steps(len(train_ds))
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(base_model_dir)
    if "input_ids" not in train_ds.column_names:
        train_ds = tokenize_conversations(train_ds, tokenizer, cfg.max_length)
    plan = plan_for(base_model_dir, cfg, lengths=sample_lengths(train_ds, tokenizer), total_steps=total_steps)
    log.info("training plan: %s", "; ".join(plan.reasons) or "defaults")
    model = load_model(base_model_dir, plan)
    pretokenized = "input_ids" in train_ds.column_names
    columns = ([c for c in ("input_ids", "labels", "assistant_masks") if c in train_ds.column_names]
               if pretokenized else ["messages"])
    args = dict(
        output_dir=str(work_dir),
        max_steps=total_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=plan.optim,
        bf16=plan.bf16,
        fp16=False,
        use_cpu=plan.device == "cpu",
        max_length=cfg.max_length,
        assistant_only_loss=not pretokenized,
        packing=False,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=cfg.report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    # checkpointing (under the argument name this transformers knows), packing, optimizer, kernels
    args.update(sft_overrides(plan))
    args.update(rank.trainer_args())  # multi-GPU hook (DDP options)
    trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=train_ds.select_columns(columns),
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback and the log, not stdout
    install(trainer, plan, tokenizer.pad_token_id)
    return PreparedRun(trainer=trainer, tokenizer=tokenizer, plan=plan, total_steps=total_steps)


def run_sft(base_model_dir: str | Path, train_ds: "Dataset", cfg: TrainConfig, output_dir: str | Path, *,
            on_progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None,
            evaluate: EvaluateFn | None = None) -> SFTResult:
    """Train a fresh LoRA adapter on `train_ds` (column `messages`) and write it into `output_dir`.

    `output_dir` must exist and is the only place written (the caller renames it when complete).
    When `should_cancel()` turns true the run stops after the current step, writes no adapter and
    returns `cancelled=True`. `evaluate(model, tokenizer)` then judges the trained adapter while it
    is in memory (a PEFT model: `disable_adapter()` gives the base); what it returns is
    `SFTResult.evaluation`.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    n_train = len(train_ds)
    if n_train == 0:
        raise ValueError("the training split is empty")
    if should_cancel is not None and should_cancel():
        return SFTResult(None, [], 0, cfg.total_steps(n_train), n_train, cancelled=True)
    rank = distributed.current()
    on_progress, should_cancel = _join_ranks(rank, base_model_dir, train_ds, cfg, on_progress, should_cancel)
    cfg = cfg.for_processes(rank.world_size)
    total_steps = cfg.total_steps(n_train)

    watch = StepWatch()
    scratch = output_dir / "trainer_state"  # the Trainer's own output (logs if report_to is set)
    phases: dict[str, float] = {}
    with timed(phases, "prepare_s"):  # load model + tokenizer, tokenize/pack the data
        prepared = prepare_trainer(base_model_dir, train_ds, cfg, scratch,
                                   callbacks=[progress_callback(total_steps, on_progress, should_cancel, watch)])
    with timed(phases, "train_loop_s"):
        output = prepared.trainer.train()
    phases.update(watch.step_phases())
    result = _result(prepared, output, watch, total_steps, n_train)
    if not result.cancelled:
        with timed(phases, "save_s"):
            _save(prepared, cfg, output_dir, scratch, rank, result)
    if result.cancelled or not rank.is_main:  # multi-GPU hook: the other ranks only train (no files, no evaluation)
        shutil.rmtree(scratch, ignore_errors=True)
        result.duration_s = time.perf_counter() - started
        return result
    if evaluate is not None:
        with timed(phases, "candidate_eval_s"):
            if _evaluates_in_memory(prepared) and _switch_to_eval_attention(prepared):
                result.evaluation = evaluate(prepared.trainer.model, prepared.tokenizer)
            else:
                del prepared  # the trained copy leaves memory before the evaluation copy loads
                with evaluation_model(base_model_dir, output_dir, cfg) as (model, eval_tokenizer):
                    result.evaluation = evaluate(model, eval_tokenizer)
    result.phases = phases
    result.duration_s = time.perf_counter() - started
    return result


def _join_ranks(rank, base_model_dir: str | Path, train_ds: "Dataset", cfg: TrainConfig,
                on_progress: ProgressFn | None, should_cancel: Callable[[], bool] | None):
    """Multi-GPU hook (trainer/distributed.py): rank 0 hands the run to the other ranks, every rank trains its
    share of the global batch, only rank 0 reports, and all stop at the same step when rank 0 is told to cancel."""
    if not rank.enabled:
        return on_progress, should_cancel
    if rank.is_main:
        distributed.share_work(base_model_dir, train_ds, cfg)
    else:
        on_progress = None
    return on_progress, distributed.agreed(should_cancel)


def _result(prepared: PreparedRun, output, watch: StepWatch, total_steps: int, n_train: int) -> SFTResult:
    steps = prepared.trainer.state.global_step
    return SFTResult(train_loss=float(output.training_loss) if steps else None, loss_history=watch.history,
                     steps=steps, total_steps=total_steps, n_train=n_train, cancelled=watch.cancelled,
                     plan=prepared.plan.to_dict())


def _save(prepared: PreparedRun, cfg: TrainConfig, output_dir: Path, scratch: Path, rank, result: SFTResult) -> None:
    """The adapter, the tokenizer and the config the run trained with, into `output_dir` (rank 0 writes)."""
    trainer = prepared.trainer
    if rank.fsdp:  # multi-GPU hook: gathering the shards is a collective; every rank joins, rank 0 writes
        trainer.save_model(str(output_dir))
    if not rank.is_main:
        return
    if not rank.fsdp:
        trainer.model.save_pretrained(str(output_dir))
    prepared.tokenizer.save_pretrained(str(output_dir))
    (output_dir / "training_config.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "plan": prepared.plan.to_dict(), "total_steps": result.total_steps,
         "steps": result.steps}, indent=2))
    if scratch.exists() and not any(scratch.iterdir()):
        scratch.rmdir()


def _evaluates_in_memory(prepared: PreparedRun) -> bool:
    """Whether the in-memory model measures as a freshly loaded one would (the gate's one yardstick): not after
    training on a 4-bit base, with compiled blocks (new shapes would recompile) or sharded (FSDP)."""
    plan = prepared.plan
    return not (plan.qlora or plan.compile or distributed.current().fsdp)


def _switch_to_eval_attention(prepared: PreparedRun) -> bool:
    """Put the trained model on the kernel versions are judged with (`EVAL_ATTENTION`); False if it cannot
    change kernel. The packed-row kernel hands padded batches to SDPA, so it evaluates as SDPA already."""
    from trainer.packing import ATTN_IMPLEMENTATION

    if prepared.plan.attn_implementation in (ATTN_IMPLEMENTATION, EVAL_ATTENTION):
        return True
    model = prepared.trainer.model
    try:
        model.set_attn_implementation(EVAL_ATTENTION)
    except (ValueError, ImportError) as exc:
        log.info("evaluating a fresh copy: the trained model cannot switch to %s attention (%s)", EVAL_ATTENTION, exc)
        return False
    return model.config._attn_implementation == EVAL_ATTENTION


# --- evaluation -----------------------------------------------------------------------------------

def mean_token_nll(model, tokenizer, ds: "Dataset", max_length: int, batch_size: int) -> tuple[float | None, int]:
    """Mean NLL per labelled (assistant) token of `ds` under `model`, and the number of such tokens."""
    import torch
    import torch.nn.functional as F

    encoded = [encode_conversation(tokenizer, m, max_length) for m in ds["messages"]]
    encoded = [e for e in encoded if any(t != -100 for t in e["labels"][1:])]
    if not encoded:
        return None, 0
    encoded.sort(key=lambda e: len(e["input_ids"]))
    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(encoded):
            # as many rows as fit the logits budget (rows are sorted by length, so the last is the longest)
            end = start + 1
            while (end < len(encoded) and end - start < batch_size
                   and (end - start + 1) * len(encoded[end]["input_ids"]) * vocab * 4 <= EVAL_LOGITS_BUDGET):
                end += 1
            rows = encoded[start:end]
            start = end
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                ids[i, :n] = torch.tensor(r["input_ids"])
                labels[i, :n] = torch.tensor(r["labels"])
                attention[i, :n] = 1
            # logits at position p predict token p+1: keep only positions whose next token is labelled
            targets = labels[:, 1:]
            keep = torch.nonzero((targets != -100).any(dim=0)).squeeze(1)
            with torch.no_grad():
                out = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                            logits_to_keep=keep.to(device))
            logits = out.logits.float()
            gold = targets[:, keep].to(device)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=-100,
                                  reduction="sum")
            total_nll += float(nll)
            total_tokens += int((gold != -100).sum())
    finally:
        model.train(was_training)
    return total_nll / total_tokens, total_tokens


def _eval_plan(cfg: TrainConfig, base_model_dir: str | Path) -> Plan:
    """How every version is evaluated: unquantized base in the machine's dtype, the servers' attention."""
    return plan_for(base_model_dir, cfg.with_overrides(qlora="off", gradient_checkpointing="off", packing="off",
                                                       attn_implementation=EVAL_ATTENTION))


@contextmanager
def evaluation_model(base_model_dir: str | Path, adapter_dir: str | Path | None, cfg: TrainConfig):
    """(model, tokenizer) as every version is evaluated: the base per `_eval_plan`, plus the adapter if given."""
    import torch

    model = load_model(base_model_dir, _eval_plan(cfg, base_model_dir))
    tokenizer = load_tokenizer(base_model_dir, _model_type(base_model_dir))
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json is missing)")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    try:
        yield model, tokenizer
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def eval_loss(base_model_dir: str | Path, adapter_dir: str | Path | None, eval_ds: "Dataset",
              cfg: TrainConfig) -> float | None:
    """Mean NLL per assistant token of `eval_ds` under the base model (+ the adapter, if given).

    None when the split has no assistant tokens left after truncation.
    """
    if len(eval_ds) == 0:
        return None
    with evaluation_model(base_model_dir, adapter_dir, cfg) as (model, tokenizer):
        return mean_token_nll(model, tokenizer, eval_ds, cfg.max_length, cfg.eval_batch_size)[0]
