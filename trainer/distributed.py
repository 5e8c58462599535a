"""This process's place in a multi-process training job, and the few messages its ranks exchange.

`accelerate launch` (trainer/launch.py) starts one `python -m trainer.job RUN_ID` per GPU, with
RANK, WORLD_SIZE and LOCAL_RANK in the environment. Rank 0 is the job: it reads the database,
builds the dataset, reports progress, evaluates, gates and writes the version. The other ranks
only train: they never open the database and write no file. They get what to train from rank 0
(the base folder, the training rows, the config) over a small gloo channel, so every rank trains
on exactly the split rank 0 built; and they stop at the same step as rank 0 when a moderator
cancels, because a rank that stopped alone would leave the others waiting in the gradient
all-reduce. The training itself is the transformers Trainer's DDP/FSDP (through accelerate).

A single process (WORLD_SIZE unset or 1) skips all of this: `current().enabled` is False.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NoReturn

if TYPE_CHECKING:
    from trainer.config import TrainConfig

log = logging.getLogger("trainer.distributed")


@dataclass(frozen=True)
class Distributed:
    """Rank and world of this process, as the launcher set them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: accelerate launched with --use_fsdp: the base's weights are sharded across the ranks
    fsdp: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that reports progress, evaluates and writes files."""
        return self.rank == 0

    def cuda_device_map(self) -> dict | None:
        """Where this rank loads the base on CUDA: its own GPU; under FSDP accelerate places the shards."""
        return None if self.fsdp else {"": self.local_rank}

    def trainer_args(self) -> dict[str, Any]:
        """TrainingArguments for this world: every LoRA weight takes part in every step, so DDP need not
        search the graph for unused parameters (transformers' default does, unless checkpointing)."""
        return {"ddp_find_unused_parameters": False} if self.enabled else {}


def current() -> Distributed:
    env = os.environ
    return Distributed(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                       local_rank=int(env.get("LOCAL_RANK", 0)),
                       fsdp=env.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


class _Channel:
    """The control channel: a gloo group beside the training backend (NCCL on GPUs), for Python objects."""

    group = None
    work_sent = False


def _join(device: str) -> None:
    """Join the job's process group (accelerate's own set-up: gloo on the CPU, NCCL on GPUs) and open the
    control channel. The Trainer later finds the group initialised and trains in it."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    _Channel.group = dist.new_group(backend="gloo")


def _die_with_launcher() -> None:
    """Linux: if the launcher is killed (the daemon's hard stop after the cancel grace), this rank is killed
    too, instead of living on with a GPU's memory."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_Channel.group)
    return box[0]


def share_work(base_model_dir, train_ds, cfg: "TrainConfig") -> None:
    """Rank 0: hand the run to the other ranks (they wait in `follow`). Called once, as training starts."""
    _Channel.work_sent = True
    _broadcast({"base_model_dir": str(base_model_dir), "train": train_ds.to_dict(), "cfg": cfg})


def agreed(should_cancel: Callable[[], bool] | None) -> Callable[[], bool]:
    """`should_cancel` as every rank sees it: true on all ranks as soon as it is true on any (rank 0 reads
    the moderator's cancel flag). Each call is a collective, so every rank must call it at the same points
    (the progress callback does: at each step end and each logged loss, on all ranks)."""
    import torch
    import torch.distributed as dist

    def check() -> bool:
        flag = torch.tensor([1 if (should_cancel is not None and should_cancel()) else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_Channel.group)
        return bool(flag.item())

    return check


def lead_or_follow(job: Callable[[], int], device: str) -> int:
    """The job module's entry in every rank: a single process runs `job`; in a multi-process launch rank 0
    runs `job` and the others `follow` it. Returns the process's exit code."""
    rank = current()
    if not rank.enabled:
        return job()
    _die_with_launcher()
    _join(device)
    try:
        if not rank.is_main:
            return follow()
        try:
            return job()
        finally:
            if not _Channel.work_sent:  # the run ended before training (too few examples, cancelled, an error)
                _broadcast(None)
    finally:
        _leave()


def _leave() -> None:
    """Close the process group before the interpreter exits. Left to the exit, gloo's threads can be torn
    down while still joinable, which aborts the process (SIGABRT, "terminate called without an active
    exception"), and the launcher then kills the other ranks mid-run: rank 0 while it still gates."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """Exit with `code`. A rank of a multi-process job skips the interpreter's teardown (os._exit, once its
    output is flushed): even with the group closed, that teardown can meet a communication thread still
    joinable and abort (SIGABRT: CI saw it on a follower that had trained), and the launcher then kills
    the other ranks, rank 0 mid-gate. A single process exits as usual."""
    if not current().enabled:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def follow() -> int:
    """A worker rank: train what rank 0 sends, in a scratch folder that `run_sft` leaves empty on workers."""
    from datasets import Dataset

    from trainer.sft import run_sft

    rank = current()
    work = _broadcast(None)
    if work is None:
        log.info("rank %d/%d: rank 0 ended the run before training", rank.rank, rank.world_size)
        return 0
    train_ds = Dataset.from_dict(work["train"])
    with tempfile.TemporaryDirectory(prefix=f"guildtune-rank{rank.rank}-") as scratch:
        result = run_sft(work["base_model_dir"], train_ds, work["cfg"], scratch)
    log.info("rank %d/%d: trained %d steps%s", rank.rank, rank.world_size, result.steps,
             " (cancelled)" if result.cancelled else "")
    return 0
