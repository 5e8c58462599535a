"""The evaluation gate: a candidate is published only if it is not worse than what serves now.

Two checks, both on data the candidate never trained on: eval loss on the held-out split
against the active version's (or the base model's) loss on the same split, within a relative
tolerance; and the guild's golden questions, whose expected text must appear in the answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GoldenCheck:
    question: str
    expect: str
    answer: str

    @property
    def ok(self) -> bool:
        return self.expect.casefold() in self.answer.casefold()


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    candidate_loss: float
    baseline_loss: float
    golden: list[GoldenCheck] = field(default_factory=list)


def decide(candidate_loss: float, baseline_loss: float, *, tolerance: float, baseline_name: str,
           golden: list[GoldenCheck] = (), split_note: str | None = None) -> GateResult:
    """Pass when candidate ≤ baseline × (1 + tolerance) and every golden answer is kept."""
    limit = baseline_loss * (1.0 + tolerance)
    golden = list(golden)
    failed = [g for g in golden if not g.ok]
    note = f" ({split_note})" if split_note else ""
    if candidate_loss > limit:
        reason = (f"eval loss {candidate_loss:.4f} is worse than {baseline_name}'s {baseline_loss:.4f} "
                  f"(tolerance {tolerance:.0%}){note}")
        return GateResult(False, reason, candidate_loss, baseline_loss, golden)
    if failed:
        listing = "; ".join(f"{g.question!r} should mention {g.expect!r}" for g in failed[:5])
        reason = f"{len(failed)} of {len(golden)} golden question(s) lost their answer: {listing}"
        return GateResult(False, reason, candidate_loss, baseline_loss, golden)
    reason = (f"eval loss {candidate_loss:.4f} vs {baseline_name}'s {baseline_loss:.4f} "
              f"(tolerance {tolerance:.0%}){note}")
    if golden:
        reason += f"; {len(golden)} golden question(s) kept"
    return GateResult(True, reason, candidate_loss, baseline_loss, golden)
