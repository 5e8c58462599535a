"""Would the gate let a retrain through? Every ordered pair of recorded runs on the same facts, judged
as "active version → candidate" by the gate's recall rule (trainer/gate.py) and by the rule before it.

Runs of `bench/learning_quality.py` that differ only in their seed or a setting answer different
subsets of the same questions, so a retrain of unchanged data draws such a candidate. Before, the gate
refused a candidate that lost more than `tolerance` of what the active version answered, example by
example (the baseline here). Now it counts net: answers lost less answers newly learned. Both rules
read each run's `gate_evidence` (the probed examples and those it answered, as its version recorded
them), so a pair costs no training. Drift and golden questions are left out: only recall is judged.

Usage: python bench/gate_on_reruns.py [--runs bench/results/learning_quality_variants.json] [--tolerance 0.05]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.gate import Evidence, decide  # noqa: E402


def per_example_refuses(candidate: Evidence, previous: Evidence, tolerance: float) -> bool:
    """The rule before: more than `tolerance` of what `previous` answered is lost, whatever was learned."""
    common = candidate.probed & previous.probed
    for mine, theirs in ((candidate.taught_known, previous.taught_known),
                         (candidate.paraphrase_known, previous.paraphrase_known)):
        knew = theirs & common
        if len(knew - mine) > math.floor(tolerance * len(knew) + 1e-9):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(REPO / "bench" / "results" / "learning_quality_variants.json"))
    parser.add_argument("--tolerance", type=float, default=0.05, help="GUILDTUNE_GATE_TOLERANCE")
    args = parser.parse_args()
    runs = json.loads(Path(args.runs).read_text(encoding="utf-8"))["runs"]
    evidence = {name: Evidence.from_metrics({**run["trained"]["gate_evidence"], "drift": None})
                for name, run in runs.items() if "gate_evidence" in run["trained"]}
    pairs = [(a, b) for a, b in itertools.permutations(evidence, 2) if evidence[a].probed == evidence[b].probed]
    if not pairs:
        raise SystemExit(f"{args.runs} holds no two runs with gate_evidence on the same questions")
    before = now = 0
    for active, candidate in pairs:
        old = per_example_refuses(evidence[candidate], evidence[active], args.tolerance)
        new = not decide(evidence[candidate], evidence[active], previous_name="the active version",
                         recall_tolerance=args.tolerance, max_drift=math.inf).passed
        before, now = before + old, now + new
        print(f"{active} -> {candidate}: per example {'refused' if old else 'passed'}, "
              f"net {'refused' if new else 'passed'}")
    print(f"{len(pairs)} pairs of {len(evidence)} runs: refused per example (before) {before}, "
          f"net (now) {now}; now / before = {now / before if before else float('nan'):.2f}")


if __name__ == "__main__":
    main()
