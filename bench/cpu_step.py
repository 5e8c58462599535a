"""How long is one CPU training step of the default learning rows, scoring every position vs only the labelled ones?

TRL's fused LM head projects every position off Triton devices; guildtune makes it project only the
positions with a label on the CPU too (`trainer.speed.score_labelled_positions_only`). This times the
same batches of the real default rows (30 facts of bench/data/learning_facts.json, the job's
`build_training_set` with the default passes, paraphrases and general mix) through the real
`prepare_trainer` on the CPU, both ways, alternating, and prints the median step (forward + backward)
of each, the ratio, and that both give the same loss. Results: bench/results/cpu_step.json.

Usage: python bench/cpu_step.py [--base-dir DIR] [--steps 4] [--facts 30]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows(n_facts: int, batch: int | None):
    from trainer.config import TrainConfig
    from trainer.dataset import build_training_set, general_instructions

    facts = json.loads((REPO / "bench" / "data" / "learning_facts.json").read_text(encoding="utf-8"))[:n_facts]
    examples = [(i + 1, [{"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"]}])
                for i, f in enumerate(facts)]
    cfg = TrainConfig.for_dataset(len(examples), device="cpu", **({"per_device_batch_size": batch} if batch else {}))
    training = build_training_set(examples, "You are the assistant of the Copperfield Makers' Discord server.",
                                  passes=cfg.epochs(len(examples)), paraphrase_share=cfg.paraphrase_share,
                                  general=general_instructions(), general_share=cfg.general_share)
    return training.train, cfg


def time_steps(base_dir: str, train, cfg, steps: int, labelled_only: bool) -> tuple[list[float], list[float]]:
    import torch
    import trl.trainer.utils as trl_utils

    from trainer.sft import prepare_trainer

    with tempfile.TemporaryDirectory() as work:
        prepared = prepare_trainer(base_dir, train, cfg.with_overrides(num_epochs=1), work)
        patched = trl_utils._use_triton
        if not labelled_only:  # undo the project's hook: TRL's own choice (every position on the CPU)
            trl_utils._use_triton = patched.trl_original
        trainer = prepared.trainer
        trainer.model.train()
        batches = iter(trainer.get_train_dataloader())
        times, losses = [], []
        try:
            for _ in range(steps):
                batch = {k: v for k, v in next(batches).items() if torch.is_tensor(v)}
                t0 = time.perf_counter()
                loss = trainer.compute_loss(trainer.model, batch)
                loss.backward()
                times.append(time.perf_counter() - t0)
                losses.append(float(loss))
                trainer.model.zero_grad(set_to_none=True)
        finally:
            trl_utils._use_triton = patched
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", default=str(REPO / "data" / "models" / "gemma-3-270m"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--facts", type=int, default=30)
    parser.add_argument("--batch", type=int, default=None, help="conversations a step (default: the config's)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_step.json"))
    args = parser.parse_args()
    import torch

    train, cfg = rows(args.facts, args.batch)
    result = {"rows": len(train), "batch": cfg.per_device_batch_size, "threads": torch.get_num_threads()}
    for name, labelled in (("all_positions", False), ("labelled_only", True)):
        times, losses = time_steps(args.base_dir, train, cfg, args.steps, labelled)
        # the first step warms the allocator and kernels up: the median is of the rest
        result[name] = {"step_s": [round(t, 2) for t in times], "median_step_s": statistics.median(times[1:]),
                        "losses": losses}
        print(f"{name:14s} median step {result[name]['median_step_s']:.2f} s, "
              f"{result[name]['median_step_s'] / cfg.per_device_batch_size:.2f} s a conversation (steps {result[name]['step_s']})")
    result["speedup"] = result["all_positions"]["median_step_s"] / result["labelled_only"]["median_step_s"]
    result["same_loss"] = all(abs(a - b) < 1e-3 * max(1.0, abs(a)) for a, b in
                              zip(result["all_positions"]["losses"], result["labelled_only"]["losses"]))
    print(f"labelled-only steps are {result['speedup']:.2f}x faster; same loss: {result['same_loss']}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
