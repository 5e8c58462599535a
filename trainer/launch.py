"""How many processes train one run, with which parallelism, and the command that starts them.

`GUILDTUNE_TRAIN_GPUS=auto|N` (auto: every visible GPU; 1 on a machine without CUDA):
- one process: `python -m trainer.job RUN_ID`, as always;
- N > 1: `accelerate launch --multi_gpu --num_processes N -m trainer.job RUN_ID` (accelerate's own
  launcher, torch elastic underneath); every rank runs the job module and trainer/distributed.py
  says who does what (rank 0 writes, the others only train).

The parallelism follows the project's memory estimate (trainer/estimate.py) per GPU:
- `ddp`: LoRA on a base replicated on each GPU, gradients all-reduced: when the base fits one GPU,
  the usual case for a community bot's base;
- `fsdp`: the base sharded across the GPUs (FSDP2 through accelerate) when replicated it would not
  fit one GPU but a 1/N share does;
- `ddp_qlora`: a 4-bit base on each GPU and DDP on the LoRA weights only, because bitsandbytes'
  4-bit weights cannot be sharded: with GUILDTUNE_QLORA=on, or (auto) when the base fits neither
  replicated nor sharded.
On the CPU (GUILDTUNE_DEVICE=cpu and N > 1: the tests) the N processes train with gloo.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from trainer.estimate import GiB, MemoryEstimate, estimate_memory, per_gpu_bytes

log = logging.getLogger("trainer.launch")

#: Secrets a training job never needs: they stay out of its environment (its crash output can be shown).
SECRET_VARIABLES = ("DISCORD_TOKEN", "VLLM_API_KEY")
#: The variable through which a launch tells every rank's job whether its base is 4-bit (`LaunchPlan.env`).
QLORA_ENV = "GUILDTUNE_QLORA"
STRATEGIES = ("single", "ddp", "fsdp", "ddp_qlora")
#: accelerate's FSDP2 options for a PEFT model: wrap each decoder layer (the model's `_no_split_modules`),
#: gather a full state dict for the adapter save, load the base once on rank 0 and broadcast it.
FSDP_ARGS = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
             "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true",
             "--fsdp_cpu_ram_efficient_loading", "true")


def inherited_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """What a job process inherits: the parent's environment without guildtune's own settings (the job
    gets its options as JSON) and without secrets."""
    return {k: v for k, v in parent.items() if not k.startswith("GUILDTUNE_") and k not in SECRET_VARIABLES}


@dataclass(frozen=True)
class LaunchOptions:
    """The settings a launch reads (guildtune/runtime.py builds them from GUILDTUNE_*)."""

    #: GUILDTUNE_TRAIN_GPUS: "auto" or a number of processes
    train_gpus: str
    device: str
    base_model: str
    models_dir: Path
    qlora: str
    memory_cap_gib: float | None


class LaunchError(ValueError):
    """GUILDTUNE_TRAIN_GPUS asks for what this machine cannot give; the message says what to set instead."""


@dataclass(frozen=True)
class LaunchPlan:
    processes: int
    strategy: str
    device: str
    reasons: tuple[str, ...] = ()

    def command(self, run_id: int) -> list[str]:
        """argv of the job process (the daemon's child): the job itself, or accelerate's launcher of N of it."""
        return self.argv(["-m", "trainer.job", str(run_id)])

    def argv(self, target: list[str], python: str = sys.executable) -> list[str]:
        """argv that runs `target` (`["-m", module, ...]` or `[script, ...]`) in each of this plan's processes."""
        if self.processes == 1:
            return [python, *target]
        # --main_process_port 0: accelerate picks a free port, so two daemons on one host do not collide
        launcher = [python, "-m", "accelerate.commands.launch", "--num_processes", str(self.processes),
                    "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--quiet"]
        parallel = list(FSDP_ARGS) if self.strategy == "fsdp" else ["--multi_gpu"]
        return [*launcher, *parallel, *target]

    def env(self) -> dict[str, str]:
        """Settings the ranks must share with this plan: QLoRA on for ddp_qlora, off under FSDP (the
        sharded base fits; 4-bit weights could not be sharded anyway). The job reads them back with
        `rank_overrides`."""
        return {"ddp_qlora": {QLORA_ENV: "on"}, "fsdp": {QLORA_ENV: "off"}}.get(self.strategy, {})


def rank_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """What `LaunchPlan.env` set for this rank, as TrainConfig fields over the job's own."""
    return {"qlora": environ[QLORA_ENV]} if QLORA_ENV in environ else {}


def process_count(train_gpus: str, device: str, visible_gpus: int) -> int:
    """Processes for GUILDTUNE_TRAIN_GPUS on a machine with `visible_gpus` CUDA devices."""
    if train_gpus == "auto":
        return 1 if device == "cpu" else max(1, visible_gpus)
    n = int(train_gpus)
    if n == 1 or device == "cpu":
        return n  # on the CPU, N gloo processes share the cores
    if visible_gpus == 0:
        raise LaunchError(f"GUILDTUNE_TRAIN_GPUS={n} but no CUDA GPU is visible; set it to auto (one process), "
                          f"or GUILDTUNE_DEVICE=cpu to train {n} processes on the CPU.")
    if n > visible_gpus:
        raise LaunchError(f"GUILDTUNE_TRAIN_GPUS={n} but only {visible_gpus} GPU(s) are visible (check "
                          f"CUDA_VISIBLE_DEVICES); set it to auto or to at most {visible_gpus}.")
    return n


def choose_strategy(processes: int, lora: MemoryEstimate, qlora: MemoryEstimate, capacity_gib: float,
                    qlora_setting: str, bitsandbytes: bool) -> tuple[str, str]:
    """(strategy, reason) for `processes` GPUs of `capacity_gib` each; `lora`/`qlora` are one GPU's estimates,
    fitting when within the training plan's FIT_FRACTION of a GPU (trainer/plan.py decides QLoRA by it too)."""
    from trainer.plan import FIT_FRACTION

    usable = FIT_FRACTION * capacity_gib
    replicated, sharded = lora.total_bytes / GiB, per_gpu_bytes(lora, processes) / GiB
    if qlora_setting == "on":
        return "ddp_qlora", ("QLoRA configured: a 4-bit base on each GPU, DDP on the LoRA weights "
                             "(bitsandbytes 4-bit weights cannot be sharded)")
    if replicated <= usable:
        return "ddp", f"DDP: the bf16 LoRA run needs ~{replicated:.1f} GiB, fits one GPU ({usable:.1f} GiB usable)"
    if sharded <= usable:
        return "fsdp", (f"FSDP: ~{replicated:.1f} GiB replicated > {usable:.1f} GiB usable per GPU; sharded over "
                        f"{processes} GPUs ~{sharded:.1f} GiB each")
    quantized = qlora.total_bytes / GiB
    if qlora_setting == "auto" and bitsandbytes and quantized <= usable:
        return "ddp_qlora", (f"QLoRA with DDP: ~{sharded:.1f} GiB per GPU even sharded > {usable:.1f} GiB usable; "
                             f"a 4-bit base needs ~{quantized:.1f} GiB")
    return "fsdp", (f"FSDP over {processes} GPUs, though the estimate (~{sharded:.1f} GiB each) exceeds "
                    f"{usable:.1f} GiB usable: the run may run out of memory; add GPUs or use a smaller base")


def plan_launch(options: LaunchOptions) -> LaunchPlan:
    """The launch for this machine and these options (GPU count, memory per GPU, the base's estimate)."""
    import importlib.util

    if options.train_gpus == "1":
        return LaunchPlan(1, "single", options.device, ("GUILDTUNE_TRAIN_GPUS=1",))
    import torch

    cuda = options.device != "cpu" and torch.cuda.is_available()
    visible = torch.cuda.device_count() if cuda else 0
    n = process_count(options.train_gpus, options.device, visible)
    if n == 1:
        return LaunchPlan(1, "single", "cuda" if cuda else "cpu", ("one GPU" if cuda else "no CUDA GPU: one process",))
    if not cuda:
        return LaunchPlan(n, "ddp", "cpu", (f"{n} processes on the CPU (DDP over gloo)",))

    from trainer.config import TrainConfig
    from trainer.plan import gpu_budget_gib

    cfg = TrainConfig().for_processes(n)
    kw = dict(seq_len=cfg.max_length, batch_size=cfg.per_device_batch_size, lora_r=cfg.lora_r,
              gradient_checkpointing=True, models_dir=options.models_dir)
    lora = estimate_memory(options.base_model, "lora", **kw)
    qlora = estimate_memory(options.base_model, "qlora", **kw)
    capacity = gpu_budget_gib(min(torch.cuda.get_device_properties(i).total_memory for i in range(n)),
                              options.memory_cap_gib)
    strategy, reason = choose_strategy(n, lora, qlora, capacity, options.qlora,
                                       importlib.util.find_spec("bitsandbytes") is not None)
    return LaunchPlan(n, strategy, "cuda", (reason,))


def job_command(run_id: int, options: LaunchOptions) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of run `run_id`'s job process (what the daemon starts)."""
    plan = plan_launch(options)
    if plan.processes > 1:
        log.info("run %s: %d training processes, %s (%s)", run_id, plan.processes, plan.strategy,
                 "; ".join(plan.reasons))
    return plan.command(run_id), plan.env()
