"""The evaluation gate: a candidate is published only if it knows what serves now, and stayed itself.

Every approved example is trained on (the community's data is facts, not a sample), so the gate
judges on evidence that costs the community none of them:
- recall: on a stable sample of approved questions, asked as taught and in probe phrasings never
  trained on (`trainer.recall`), the candidate must know what the version it replaces knew, losing
  at most `recall_tolerance` of it (compared per example, on the examples both were asked);
- drift: on the base model's own answers to shipped general prompts (`trainer.drift`), the
  candidate may predict at most `max_drift` worse than the base;
- golden questions: every expected text must appear in the candidate's answer;
- preferences (when the run had a KTO stage on voted answers, trainer/kto.py): on voted answers
  held out of that stage, the margin between liked and disliked answers' log-likelihood must not
  fall below the SFT-only adapter's.
The reason is one sentence for moderators, naming what failed and by how much.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class GoldenCheck:
    question: str
    expect: str
    answer: str

    @property
    def ok(self) -> bool:
        return self.expect.casefold() in self.answer.casefold()


@dataclass(frozen=True)
class Evidence:
    """What one model knew on the probes (example keys), and its drift (None: not measured)."""

    probed: frozenset[str]
    taught_known: frozenset[str]
    paraphrase_known: frozenset[str]
    drift: float | None = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> "Evidence | None":
        """A version's recorded evidence; None for versions recorded before the gate kept it."""
        if "probed" not in metrics:
            return None
        return cls(frozenset(metrics["probed"]), frozenset(metrics.get("taught_known", ())),
                   frozenset(metrics.get("paraphrase_known", ())), metrics.get("drift"))


@dataclass(frozen=True)
class PreferenceCheck:
    """Liked minus disliked mean log-likelihood per answer token on held-out voted answers."""

    n_held_out: int
    sft_margin: float
    candidate_margin: float

    @property
    def ok(self) -> bool:
        return self.candidate_margin >= self.sft_margin


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    golden: list[GoldenCheck] = field(default_factory=list)


def _share(known: int, asked: int) -> str:
    return f"{known}/{asked}"


def _lost(candidate: frozenset[str], previous: frozenset[str], common: frozenset[str],
          tolerance: float) -> tuple[set[str], int, int]:
    """(examples the previous model knew and the candidate lost, how many may be lost, how many it knew)."""
    knew = previous & common
    lost = set(knew - candidate)
    return lost, math.floor(tolerance * len(knew) + 1e-9), len(knew)


def decide(candidate: Evidence, previous: Evidence | None, *, previous_name: str, recall_tolerance: float,
           max_drift: float, golden: list[GoldenCheck] = (), questions: Mapping[str, str] | None = None,
           preference: PreferenceCheck | None = None) -> GateResult:
    """Pass when the candidate kept what `previous` knew (within tolerance), did not drift, kept golden answers,
    and (with `preference`) its preference stage did not make liked answers less preferred to disliked ones.

    `questions` maps example keys to their question, to name lost examples in the reason.
    """
    golden = list(golden)
    questions = questions or {}
    n = len(candidate.probed)
    summary = (f"knows {_share(len(candidate.taught_known), n)} taught questions and "
               f"{_share(len(candidate.paraphrase_known), n)} asked differently")
    if candidate.drift is not None:
        summary += f", drift {candidate.drift:+.1%} from the base (limit {max_drift:.0%})"

    if candidate.drift is not None and candidate.drift > max_drift:
        return GateResult(False, f"drifted {candidate.drift:+.1%} from the base model on general prompts "
                                 f"(limit {max_drift:.0%}): it would answer other questions worse; {summary}",
                          golden)
    if previous is not None:
        common = candidate.probed & previous.probed
        for kind, mine, theirs in (("taught", candidate.taught_known, previous.taught_known),
                                   ("asked differently", candidate.paraphrase_known, previous.paraphrase_known)):
            lost, allowed, knew = _lost(mine, theirs, common, recall_tolerance)
            if len(lost) > allowed:
                named = "; ".join(repr(questions.get(k, k)) for k in sorted(lost)[:3])
                return GateResult(False, f"forgot {len(lost)} of the {knew} questions ({kind}) that "
                                         f"{previous_name} answered (tolerance {recall_tolerance:.0%}), e.g. "
                                         f"{named}; {summary}", golden)
        summary += (f" ({previous_name}: {_share(len(previous.taught_known & common), len(common))} and "
                    f"{_share(len(previous.paraphrase_known & common), len(common))})")
    failed = [g for g in golden if not g.ok]
    if failed:
        listing = "; ".join(f"{g.question!r} should mention {g.expect!r}" for g in failed[:5])
        return GateResult(False, f"{len(failed)} of {len(golden)} golden question(s) lost their answer: "
                                 f"{listing}", golden)
    if preference is not None:
        margins = (f"liked minus disliked answers' log-likelihood per token on {preference.n_held_out} held-out "
                   f"voted answers: {preference.candidate_margin:+.3f} after the preference stage, "
                   f"{preference.sft_margin:+.3f} with SFT only")
        if not preference.ok:
            return GateResult(False, f"the preference stage made voted answers worse ({margins}); {summary}", golden)
        summary += f"; {margins}"
    reason = summary + (f"; {len(golden)} golden question(s) kept" if golden else "")
    return GateResult(True, reason, golden)
