"""The evaluation gate: a candidate is published only if it knows what serves now, and stayed itself.

Every approved example is trained on (the community's data is facts, not a sample), so the gate
judges on evidence that costs the community none of them:
- recall: on a stable sample of approved questions, asked as taught and in probe phrasings never
  trained on (`trainer.recall`), the candidate must answer at least as many of the questions the
  version it replaces answered, less `recall_tolerance` of them (on the examples both were asked).
  The count is net: the examples it lost, less those it learned that the version did not. Judged
  example by example, 27 of 30 measured pairs of runs were refused, since two runs that differ
  only in the seed answer different subsets (bench/gate_on_reruns.py); the lost ones are named
  either way;
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


@dataclass(frozen=True)
class RecallChange:
    """One kind of recall, previous model → candidate, on the examples both were asked."""

    knew: int  # how many the previous model answered
    lost: frozenset[str]  # of those, the ones the candidate does not answer
    learned: int  # answered by the candidate and not by the previous model
    allowed: int  # how many more may be lost than learned

    @classmethod
    def between(cls, candidate: frozenset[str], previous: frozenset[str], common: frozenset[str],
                tolerance: float) -> "RecallChange":
        knew = previous & common
        return cls(len(knew), frozenset(knew - candidate), len((candidate & common) - previous),
                   math.floor(tolerance * len(knew) + 1e-9))

    @property
    def ok(self) -> bool:
        return len(self.lost) - self.learned <= self.allowed


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
        lost_now: list[str] = []
        for kind, mine, theirs in (("taught", candidate.taught_known, previous.taught_known),
                                   ("asked differently", candidate.paraphrase_known, previous.paraphrase_known)):
            change = RecallChange.between(mine, theirs, common, recall_tolerance)
            named = "; ".join(repr(questions.get(k, k)) for k in sorted(change.lost)[:3])
            if not change.ok:
                return GateResult(False, f"forgot {len(change.lost)} of the {change.knew} questions ({kind}) that "
                                         f"{previous_name} answered, and learned {change.learned} new ones "
                                         f"(tolerance {recall_tolerance:.0%}), e.g. {named}; {summary}", golden)
            if change.lost:
                lost_now.append(f"lost {len(change.lost)} ({kind}), e.g. {named}")
        summary += (f" ({previous_name}: {_share(len(previous.taught_known & common), len(common))} and "
                    f"{_share(len(previous.paraphrase_known & common), len(common))}"
                    + "".join(f"; {line}" for line in lost_now) + ")")
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
