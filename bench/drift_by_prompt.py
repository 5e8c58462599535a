"""Where a version's drift comes from: each drift prompt's NLL under the base and under a fresh candidate.

The gate's drift is one mean over the 40 shipped drift prompts (trainer/drift.py). To tell forgetting
from a version that copies an unrelated note, this trains a candidate the way the job does (the job's
`training_rows` on the first N facts of bench/data/learning_facts.json, the shipped general mix with
the base's own answers, `run_sft`), then scores every drift prompt as served (with its notes, if it gets
any) under the base and the candidate, and prints the mean NLL of the prompts with notes and of those
without, the ratio candidate / base of each (the baseline is the base, in the same run), and the prompts
the candidate predicts worst. Nothing is published.

Usage: python bench/drift_by_prompt.py [--facts 30] [--target-steps 45] [--models-dir DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEM_PROMPT = "You are the assistant of the Copperfield Makers' Discord server."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=30)
    parser.add_argument("--target-steps", type=int, default=None, help="TrainConfig.target_steps (default: its own)")
    parser.add_argument("--models-dir", default=os.environ.get("GUILDTUNE_MODELS_DIR", str(REPO / "data" / "models")))
    parser.add_argument("--base", default="embedded:gemma-3-270m")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from storage.records import GuildSettings
    from trainer.base_model import resolve_base_model
    from trainer.config import TrainConfig
    from trainer.drift import base_view, reference
    from trainer.job import general_rows, training_rows
    from trainer.sft import mean_token_nll, run_sft

    models = Path(args.models_dir)
    base_dir = resolve_base_model(args.base, models)
    facts = json.loads((REPO / "bench" / "data" / "learning_facts.json").read_text())[:args.facts]
    examples = [_Example(i + 1, f["question"], f["answer"]) for i, f in enumerate(facts)]
    gs = GuildSettings(guild_id=1, system_prompt=SYSTEM_PROMPT)
    overrides = {"target_steps": args.target_steps} if args.target_steps else {}
    cfg = TrainConfig.for_dataset(len(examples), device="cpu", **overrides)
    training = training_rows(examples, gs, cfg, general_rows(cfg, base_dir, models))
    cfg = cfg.with_overrides(num_epochs=1)
    result: dict = {"facts": len(facts), "rows": len(training.train), "notes": training.notes_per_question}

    def evaluate(model, tokenizer):
        ref = reference(model, tokenizer, base_dir, SYSTEM_PROMPT, models / "drift", cfg.max_length,
                        cfg.eval_batch_size)
        served = [training.as_served(c) for c in ref.conversations]

        def nll(conversations):
            return [mean_token_nll(model, tokenizer, {"messages": [c]}, cfg.max_length, 1)[0] for c in conversations]

        with base_view(model):
            base = nll(served)
        candidate = nll(served)
        noted = [s != c for s, c in zip(served, ref.conversations)]
        for name, want in (("with notes", True), ("without notes", False)):
            picked = [i for i, n in enumerate(noted) if n == want]
            if picked:
                b = statistics.mean(base[i] for i in picked)
                c = statistics.mean(candidate[i] for i in picked)
                result[name] = {"prompts": len(picked), "base_nll": b, "candidate_nll": c, "ratio": c / b}
        worst = sorted(range(len(served)), key=lambda i: candidate[i] - base[i], reverse=True)[:8]
        result["worst"] = [{"prompt": ref.conversations[i][-2]["content"], "notes": noted[i],
                            "base_nll": base[i], "candidate_nll": candidate[i]} for i in worst]

    run = run_sft(base_dir, training.train, cfg, Path(tempfile.mkdtemp(prefix="drift-by-prompt-")),
                  evaluate=evaluate)
    result["steps"] = run.steps
    print(f"{result['facts']} facts, {result['rows']} rows, {run.steps} steps, notes {result['notes']}")
    for name in ("with notes", "without notes"):
        if name in result:
            g = result[name]
            print(f"  {name} ({g['prompts']} prompts): base {g['base_nll']:.3f}, candidate {g['candidate_nll']:.3f}, "
                  f"candidate / base {g['ratio']:.2f}")
    for w in result["worst"]:
        print(f"  worst: {w['base_nll']:.2f} -> {w['candidate_nll']:.2f} {'(notes) ' if w['notes'] else ''}{w['prompt']!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


class _Example:
    """What `training_rows` reads of an approved example."""

    def __init__(self, example_id: int, question: str, answer: str):
        self.id = example_id
        self.messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


if __name__ == "__main__":
    main()
