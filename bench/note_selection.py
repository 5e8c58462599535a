"""Which notes should a question carry? Paraphrase recall of ONE trained version under several note rules.

Retraining costs a CPU about 15 minutes a setting; asking a trained version the hand-written paraphrases
of bench/data/learning_facts.json again, with its notes chosen another way, costs about 80 s. So this
loads a version that `bench/learning_quality.py` trained (its adapter folder) and compares, in the same
run, the rule serving/notes.py had until session 9 (each note shown must itself hold MIN_MATCH of the
question's terms) with the rule it has now (once one note does, the best `count` are shown), at several
MIN_MATCH values. It prints each rule's recall and the ratio against the old rule at 0.2. The version
was trained with one rule's notes, so a retrain (learning_quality.py) has the last word.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEM_PROMPT = "You are the assistant of the Copperfield Makers' Discord server."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", help="a trained version's folder (adapter_model.safetensors)")
    parser.add_argument("--models-dir", default=str(REPO / "data" / "models"))
    parser.add_argument("--facts-file", default=str(REPO / "bench" / "data" / "learning_facts.json"))
    parser.add_argument("--notes", type=int, default=3)
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import serving.notes as notes
    from trainer.recall import greedy_answers

    base_dir = Path(args.models_dir) / "gemma-3-270m"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      args.adapter).eval()
    facts = json.loads(Path(args.facts_file).read_text(encoding="utf-8"))
    index = notes.NoteIndex((f["question"], f["answer"]) for f in facts)
    asked = [(f, p) for f in facts for p in f["paraphrases"]]

    def old_rule(question: str) -> list:
        """Each shown note holds MIN_MATCH itself: the best `count` that pass, found one by one."""
        passing = set(_passing(question))
        return [n for n in index.find(question, len(index)) if n in passing][:args.notes]

    def _passing(question: str) -> list:
        wanted = set(notes.terms(question))
        total = sum(index._idf.get(t, index._unseen_idf) for t in wanted)
        return [n for n in index.notes if sum(index._idf[t] for t in wanted & set(notes.terms(
            f"{n.question} {n.answer}"))) >= notes.MIN_MATCH * total]

    results = {}
    for label, rule, share in [("each note holds MIN_MATCH, 0.2", old_rule, 0.2),
                               ("each note holds MIN_MATCH, 0.15", old_rule, 0.15),
                               ("one note holds MIN_MATCH, 0.2", None, 0.2),
                               ("one note holds MIN_MATCH, 0.15", None, 0.15),
                               ("one note holds MIN_MATCH, 0.1", None, 0.1)]:
        notes.MIN_MATCH = share
        conversations = []
        for fact, question in asked:
            found = rule(question) if rule else index.find(question, args.notes)
            system = SYSTEM_PROMPT + ("\n\n" + notes.notes_block(found) if found else "")
            conversations.append([{"role": "system", "content": system}, {"role": "user", "content": question}])
        answers = greedy_answers(model, tokenizer, conversations, [40] * len(conversations), 16)
        known = sum(f["expect"].casefold() in a.casefold() for (f, _), a in zip(asked, answers))
        results[label] = known / len(asked)
        baseline = results["each note holds MIN_MATCH, 0.2"]
        print(f"{label:34s} paraphrase recall {known}/{len(asked)} = {known / len(asked):.0%} "
              f"({known / len(asked) / baseline:.2f}x the old rule at 0.2)", flush=True)


if __name__ == "__main__":
    main()
