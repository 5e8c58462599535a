"""`TrainConfig`: every knob of a LoRA SFT run, documented on the field (TRL's `…Config` style).

Plain data: `__post_init__` only validates, nothing here probes the machine. Decisions that depend
on the machine (bf16 or fp32, QLoRA or not, the optimizer, gradient checkpointing, packing) are made
in one place, `trainer.plan.plan(cfg, model_config, machine)`, so a run's log and its tests can show
exactly what was chosen and why. The number of optimizer steps scales with the dataset:
`total_steps(n_train)` aims at `target_steps`, bounded by `min_epochs` and `max_epochs`.

No torch import at module level: the bot and the CLI can read and print a config cheaply.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: Conversations per step that `TrainConfig.for_dataset` chooses between (see there).
MIN_BATCH, MAX_BATCH = 2, 8


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one LoRA SFT run. Defaults suit a small community dataset on one GPU or a CPU."""

    # --- LoRA -----------------------------------------------------------------------------------
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: the adapter's capacity. 8-64 is usual."})
    lora_alpha: int = field(default=32, metadata={
        "help": "LoRA scaling numerator; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the LoRA input. 0 is fastest; 0.05-0.1 regularises very small datasets."})
    target_modules: str | tuple[str, ...] = field(default="all-linear", metadata={
        "help": "Modules that get adapters: 'all-linear' (every linear layer but the output head) or names "
                "such as ('q_proj', 'v_proj')."})
    use_rslora: bool = field(default=False, metadata={
        "help": "Rank-stabilised LoRA (scale alpha/sqrt(r)); helps at high ranks."})

    # --- how long ------------------------------------------------------------------------------
    target_steps: int = field(default=45, metadata={
        "help": "Optimizer steps to aim at: the number of passes whose steps come nearest to it, then bounded by "
                "min_epochs/max_epochs. Small datasets get more passes (30 facts: 3), large ones fewer (1,000 rows: 1). "
                "45 keeps 30 facts under 5 minutes on a 2-core CPU; with notes, more passes bought little "
                "(bench/RESULTS.md, 'Session 10')."})
    min_epochs: int = field(default=1, metadata={"help": "At least this many passes over the training split."})
    max_epochs: int = field(default=30, metadata={
        "help": "At most this many passes (stops a handful of examples from being memorised for hours)."})
    num_epochs: int | None = field(default=None, metadata={
        "help": "Fixed number of epochs; overrides the target_steps policy when set."})
    max_steps: int | None = field(default=None, metadata={
        "help": "Hard cap on optimizer steps after the policy (GUILDTUNE_TRAIN_MAX_STEPS); for tests and demos."})

    # --- optimisation --------------------------------------------------------------------------
    learning_rate: float = field(default=2e-3, metadata={
        "help": "Peak learning rate of the adapter weights. High for LoRA (2e-4 is usual): a community's facts must "
                "stick in tens of steps (bench/RESULTS.md, 'Learning what the community teaches')."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps spent warming the LR up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the adapter weights."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    per_device_batch_size: int = field(default=8, metadata={
        "help": "Conversations per forward pass (for_dataset picks 2-8 by the dataset's size)."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Forward passes per optimizer step; effective batch = batch size x this."})
    num_processes: int = field(default=1, metadata={
        "help": "Training processes, one per GPU (GUILDTUNE_TRAIN_GPUS; see for_processes). Each takes "
                "per_device_batch_size conversations a forward pass: the global batch is per_device_batch_size "
                "x gradient_accumulation_steps x this."})
    eval_batch_size: int = field(default=8, metadata={"help": "Conversations per forward pass when evaluating."})
    max_length: int = field(default=1024, metadata={
        "help": "Tokens per conversation after templating; longer ones are truncated (the end is cut)."})
    seed: int = field(default=42, metadata={"help": "Seed for adapter init, shuffling and dropout."})
    optim: str = field(default="auto", metadata={
        "help": "Optimizer name for transformers, or 'auto': paged_adamw_8bit with QLoRA, adamw_torch_fused "
                "on CUDA, adamw_torch on CPU."})

    # --- hardware ------------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "Where to train: 'auto' uses CUDA when available, else the CPU."})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "'auto': bf16 on a GPU that supports it, fp32 otherwise (fp16 is not offered: Gemma 3 "
                "overflows in fp16)."})
    qlora: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "4-bit base weights (bitsandbytes nf4, double quant, bf16 compute) + paged 8-bit AdamW. "
                "'auto': on only with CUDA + bitsandbytes when the bf16 LoRA estimate, even with checkpointing, "
                "does not fit the GPU memory (or memory_cap_gib); 'on' requires CUDA and bitsandbytes."})
    memory_cap_gib: float | None = field(default=None, metadata={
        "help": "Train as if the GPU had only this much memory (small cards / sharing a card)."})
    gradient_checkpointing: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "Recompute activations in the backward pass: less memory, ~30% slower. 'auto': only when "
                "the estimate without it does not fit."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "Attention kernel; None picks 'eager' for Gemma models (advised for training) and 'sdpa' "
                "otherwise."})

    # --- data layout (speed work of issue 7 plugs in here) --------------------------------------
    packing: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "Pack several conversations into fixed rows (TRL 'bfd', padding-free) with per-conversation "
                "attention (trainer/packing.py). 'auto': on with CUDA + bf16, off on the CPU; see "
                "trainer/plan.py. True/False are read as on/off."})
    liger: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "Liger's fused RMSNorm/SwiGLU/RoPE kernels (needs liger-kernel). 'auto' follows the "
                "measurements in bench/RESULTS.md (trainer/plan.py says what it picks and why)."})
    compile: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "torch.compile each decoder block (packed rows have one static shape, so it compiles once). "
                "'auto' follows the measurements in bench/RESULTS.md (trainer/plan.py)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "Pad batches to a multiple of this many tokens (static shapes for compiled kernels)."})

    # --- what is learned (trainer/dataset.py) ---------------------------------------------------
    paraphrase_share: float = field(default=0.67, metadata={
        "help": "Share of each example's copies (one per pass) whose question is asked in other words "
                "(trainer/paraphrase.py): ties the answer to what is asked, not to one wording."})
    base_rewordings: int = field(default=0, metadata={
        "help": "Other wordings of each taught question the base model writes before training "
                "(trainer/rewording.py), used for those copies in turn with the templated ones. Off (0) by "
                "default: on the embedded 270M base, 2 raised paraphrase recall on 30 facts (43% -> 62%) but "
                "not on 48, for about 2 CPU minutes on a first run (bench/RESULTS.md)."})
    notes: int = field(default=3, metadata={
        "help": "Taught answers shown beside each question, found by its words (serving/notes.py), in training "
                "and in serving alike: a member who asks in other words still gets the taught answer. 0 turns "
                "it off (a version is served as it was trained)."})
    general_share: float = field(default=0.33, metadata={
        "help": "Share of the rows taken from the shipped general instructions (trainer/data/), so learning "
                "the community's facts does not wreck the model's other answers. 0 turns it off."})
    general_answers: Literal["base", "written"] = field(default="base", metadata={
        "help": "Answers of the general rows: 'base' = the base model's own greedy answers (made once per base "
                "and cached; replaying them keeps the version close to the base elsewhere), 'written' = the "
                "shipped written answers."})

    # --- preference stage: votes under answers, TRL KTO after SFT (trainer/kto.py) ---------------
    min_preference_examples: int = field(default=8, metadata={
        "help": "Approved preference examples (net-voted answers) a guild needs, with both liked and disliked "
                "ones, before a KTO stage follows SFT in its runs. Fewer: SFT only."})
    preference_holdout: int = field(default=1, metadata={
        "help": "Preference examples of each label held out of the KTO stage (the same ones every run, chosen by "
                "example key) for the gate's preference check: liked vs disliked log-likelihood margin of the "
                "candidate against the SFT-only adapter. 0: no check."})
    kto_epochs: int = field(default=3, metadata={
        "help": "Passes of the KTO stage over the training preference examples (capped by max_steps). 8 cost "
                "taught facts on the embedded model; 3 kept them and raised the held-out margin (bench/RESULTS.md)."})
    kto_learning_rate: float = field(default=5e-5, metadata={
        "help": "Learning rate of the KTO stage on the SFT adapter (TRL's 1e-6 default is for full fine-tuning; "
                "a LoRA adapter needs more to move)."})
    kto_beta: float = field(default=0.1, metadata={
        "help": "KTO beta: how far the adapter may move from the reference (the SFT adapter); higher stays closer."})
    kto_batch_size: int = field(default=8, metadata={
        "help": "Preference examples per KTO forward pass (at least 2: the KL term pairs each prompt with another "
                "row's completion); fewer examples than this make one batch."})

    # --- evaluation & logging -------------------------------------------------------------------
    logging_steps: int = field(default=1, metadata={"help": "Report the training loss every N steps."})
    report_to: str = field(default="none", metadata={
        "help": "Experiment trackers for transformers: 'none', 'tensorboard', 'wandb' (comma-separated)."})

    def __post_init__(self) -> None:
        if isinstance(self.packing, bool):  # older configs said packing=True/False
            object.__setattr__(self, "packing", "on" if self.packing else "off")
        problems = []
        if self.lora_r < 1:
            problems.append(f"lora_r={self.lora_r} must be >= 1")
        if self.lora_alpha <= 0:
            problems.append(f"lora_alpha={self.lora_alpha} must be > 0")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate={self.learning_rate} must be > 0")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1 or self.eval_batch_size < 1:
            problems.append("batch sizes and gradient_accumulation_steps must be >= 1")
        if self.num_processes < 1:
            problems.append(f"num_processes={self.num_processes} must be >= 1")
        if self.max_length < 16:
            problems.append(f"max_length={self.max_length} must be >= 16 tokens")
        if not 1 <= self.min_epochs <= self.max_epochs:
            problems.append(f"need 1 <= min_epochs ({self.min_epochs}) <= max_epochs ({self.max_epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} must be >= 1")
        if not 0 <= self.base_rewordings <= 8:
            problems.append(f"base_rewordings={self.base_rewordings} must be between 0 and 8")
        if not 0 <= self.notes <= 8:
            problems.append(f"notes={self.notes} must be between 0 and 8")
        if not 0 <= self.paraphrase_share <= 1:
            problems.append(f"paraphrase_share={self.paraphrase_share} must be between 0 and 1")
        if self.general_answers not in ("base", "written"):
            problems.append(f"general_answers={self.general_answers!r}: allowed base, written")
        if not 0 <= self.general_share < 1:
            problems.append(f"general_share={self.general_share} must be in [0, 1)")
        if self.min_preference_examples < 2 or self.preference_holdout < 0 or self.kto_epochs < 1:
            problems.append("need min_preference_examples >= 2, preference_holdout >= 0 and kto_epochs >= 1")
        if self.kto_learning_rate <= 0 or self.kto_beta <= 0:
            problems.append("kto_learning_rate and kto_beta must be > 0")
        if self.kto_batch_size < 2:
            problems.append(f"kto_batch_size={self.kto_batch_size} must be >= 2 (KTO's KL term needs two rows)")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device={self.device!r}: allowed auto, cpu, cuda")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision={self.precision!r}: allowed auto, bf16, fp32")
        if self.qlora not in ("auto", "on", "off"):
            problems.append(f"qlora={self.qlora!r}: allowed auto, on, off")
        if self.liger not in ("auto", "on", "off"):
            problems.append(f"liger={self.liger!r}: allowed auto, on, off")
        if self.compile not in ("auto", "on", "off"):
            problems.append(f"compile={self.compile!r}: allowed auto, on, off")
        if self.packing not in ("auto", "on", "off"):
            problems.append(f"packing={self.packing!r}: allowed auto, on, off")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            problems.append(f"gradient_checkpointing={self.gradient_checkpointing!r}: allowed auto, on, off")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    # --- policies -------------------------------------------------------------------------------
    @classmethod
    def for_dataset(cls, n_train: int, *, max_steps: int | None = None, device: str = "auto",
                    qlora: str = "auto", memory_cap_gib: float | None = None, **overrides: Any) -> "TrainConfig":
        """The default config for a training split of `n_train` conversations, with the CLI's overrides.

        The batch is the fewest conversations a step (MIN_BATCH..MAX_BATCH) that reaches `target_steps`
        in one pass: a fact is learned per optimizer step, while a CPU pays per conversation, so a small
        community's few facts get small batches and a few passes (measured in bench/RESULTS.md, "Learning
        what the community teaches") and a large import keeps full batches and one pass. Never larger than
        the split itself; the step policy then scales the passes to the data.
        """
        target = overrides.get("target_steps", cls.__dataclass_fields__["target_steps"].default)
        batch = overrides.pop("per_device_batch_size", None) or max(
            1, min(n_train, MAX_BATCH, max(MIN_BATCH, math.ceil(n_train / max(1, target)))))
        return cls(max_steps=max_steps, device=device, qlora=qlora, memory_cap_gib=memory_cap_gib,
                   per_device_batch_size=batch, **overrides)

    def for_processes(self, n: int) -> "TrainConfig":
        """This config split over `n` processes (one per GPU) with the same global batch, so a run learns the
        same whatever the number of GPUs, only faster: the accumulation is divided when it can be (each GPU
        keeps the per-device batch the planner filled it with), else the per-device batch (rounded up, so
        the global batch grows by less than `n` rows). Idempotent: a config already for `n` is returned."""
        if n == self.num_processes:
            return self
        if n < 1:
            raise ValueError(f"num_processes={n} must be >= 1")
        global_batch = self.per_device_batch_size * self.gradient_accumulation_steps * self.num_processes
        if self.gradient_accumulation_steps * self.num_processes % n == 0:
            return replace(self, num_processes=n,
                           gradient_accumulation_steps=self.gradient_accumulation_steps * self.num_processes // n)
        per_device = max(1, math.ceil(global_batch / (n * self.gradient_accumulation_steps)))
        return replace(self, num_processes=n, per_device_batch_size=per_device)

    def steps_per_epoch(self, n_train: int) -> int:
        per_step = self.per_device_batch_size * self.gradient_accumulation_steps * self.num_processes
        return max(1, math.ceil(n_train / per_step))

    def epochs(self, n_train: int) -> int:
        if self.num_epochs is not None:
            return self.num_epochs
        wanted = math.floor(self.target_steps / self.steps_per_epoch(n_train) + 0.5)  # the nearest, halves up
        return max(self.min_epochs, min(self.max_epochs, wanted))

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of a run on `n_train` examples: epochs x steps per epoch, capped by max_steps."""
        steps = self.epochs(n_train) * self.steps_per_epoch(n_train)
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    def with_overrides(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(data["target_modules"], tuple):
            data["target_modules"] = list(data["target_modules"])
        return data
