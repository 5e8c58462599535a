"""One LoRA run split over the ranks `accelerate launch` started, for tests/test_multi_gpu.py.

`python tests/multi_gpu_probe.py OUT_DIR BASE_DIR` in every rank: the job's own entry
(`trainer.distributed.lead_or_follow`) runs rank 0's part (`run_sft` into OUT_DIR/adapter) and makes
the other ranks follow. Each rank records, per optimizer step, the rows it trained on (the
token ids `training_step` received, padding dropped), and a worker rank records what its scratch
output folder held when `run_sft` returned; all of it goes to OUT_DIR/rank<R>.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN = dict(learning_rate=1e-2, max_length=128, lora_r=8, lora_alpha=16, lora_dropout=0.0, warmup_ratio=0.0,
           lr_scheduler_type="constant", per_device_batch_size=4, max_steps=4, device="cpu", seed=7)


def facts(n: int) -> list[list[dict]]:
    """Conversations of different lengths, so a wrong split of a batch shows in the weights."""
    return [[{"role": "user", "content": f"When does raid {i} start?"},
             {"role": "assistant", "content": f"Raid {i} starts at {i % 10} pm." + " Bring potions." * (i % 3)}]
            for i in range(n)]


def record_rows(seen: list[list[list[int]]]):
    """Wrap trainer.sft.prepare_trainer so each training step's rows are appended to `seen`."""
    import trainer.sft as sft

    original = sft.prepare_trainer

    def prepare(*args, **kwargs):
        prepared = original(*args, **kwargs)
        trainer, step = prepared.trainer, prepared.trainer.training_step

        def training_step(model, inputs, *rest, **kw):
            mask = inputs["attention_mask"].bool()
            seen.append([row[m].tolist() for row, m in zip(inputs["input_ids"], mask)])
            return step(model, inputs, *rest, **kw)

        trainer.training_step = training_step
        return prepared

    sft.prepare_trainer = prepare


def main(out_dir: str, base_dir: str) -> int:
    from datasets import Dataset

    import trainer.sft as sft
    from trainer.config import TrainConfig
    from trainer.distributed import current, lead_or_follow

    out, rank = Path(out_dir), current()
    seen: list = []
    record: dict = {"rank": rank.rank, "world_size": rank.world_size}
    record_rows(seen)
    original_run_sft = sft.run_sft

    def run_sft(*args, **kwargs):  # what a follower's run_sft left in its output folder
        result = original_run_sft(*args, **kwargs)
        record["output_files"] = sorted(os.listdir(args[3]))
        record["steps"] = result.steps
        return result

    sft.run_sft = run_sft

    def job() -> int:
        train = Dataset.from_dict({"messages": facts(8)})
        result = sft.run_sft(base_dir, train, TrainConfig(**RUN), out / "adapter")
        record["loss_history"] = result.loss_history
        return 0

    code = lead_or_follow(job, device="cpu")
    record["rows"] = seen
    (out / f"rank{rank.rank}.json").write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    from trainer.distributed import end_process

    end_process(main(*sys.argv[1:]))
