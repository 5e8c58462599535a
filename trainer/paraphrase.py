"""Questions asked in other words, made without a model: for training and for the gate.

Members never repeat the moderator's wording, so a fact trained on one phrasing only is often
missed when asked differently. Two uses, two families of forms that never share a form:
- `training_variants`: extra phrasings of each taught question, trained on with the same answer,
  so the adapter ties the answer to the question's content words rather than to one word order;
- `probe_variants`: phrasings the gate asks the candidate, never trained on, to check that what
  was taught is also answered when asked another way.

Everything here is deterministic (the choice of forms is seeded by a key, normally the example's
content hash) and linear in the question's length: plain splits and joins, no regular expressions.
"""
from __future__ import annotations

import hashlib
import random
import unicodedata

#: Words that carry no content of their own: dropped when a question is reduced to its keywords.
FUNCTION_WORDS = frozenset("""
a an the is are was were be been am do does did can could would should will shall may might must
what when where which who whom whose why how whats what's when's where's who's how's
i me my we our us you your yours it its it's this that these those there here of in on at to for
from by with about as into than then so and or but if any some please tell know remind again
anyone anybody someone hey hi hello quick question just also still ever really
""".split())

_TRAILING = "?!.,;:…"


def _clean(question: str) -> str:
    return " ".join(question.split()).strip()


def _core(question: str) -> str:
    """The question without its final punctuation."""
    return _clean(question).rstrip(_TRAILING).rstrip()


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def _words(text: str) -> list[str]:
    """Word tokens: split on whitespace, punctuation stripped at both ends (hyphens and # kept inside)."""
    out = []
    for raw in text.split():
        word = raw.strip("\"'()[]{}<>,.;:!?…")
        if word:
            out.append(word)
    return out


def keywords(question: str) -> list[str]:
    """The question's content words in order (its function words dropped), casefolded."""
    words = [unicodedata.normalize("NFKC", w).casefold() for w in _words(question)]
    kept = [w for w in words if w not in FUNCTION_WORDS]
    return kept or words


def _keyword_question(question: str) -> str:
    return " ".join(keywords(question)) + "?"


def _without_function_words(question: str) -> str:
    words = _words(_core(question))
    kept = [w for w in words if w.casefold() not in FUNCTION_WORDS or w.casefold() in _QUESTION_WORDS]
    return " ".join(kept or words) + "?"


def _rotated(question: str) -> str:
    """Content words first, the question word after: 'board-game night weekly, when?'."""
    words = keywords(question)
    lead = _words(question)[:1]
    tail = lead[0].casefold() if lead and lead[0].casefold() in _QUESTION_WORDS else "what"
    return " ".join(words) + f", {tail}?"


_QUESTION_WORDS = ("what", "when", "where", "who", "which", "how")


def _partial(question: str, head: bool) -> str:
    """The question word and half of the content words (the first or the last half): a member's question
    often shares only some words with the taught one, and a version trained only on questions that share
    them all answers from its notes only when the words all match (bench/RESULTS.md, "Session 9")."""
    words = keywords(question)
    half = (len(words) + 1) // 2
    kept = words[:half] if head else words[-half:]
    lead = _words(question)[:1]
    word = lead[0].casefold() if lead and lead[0].casefold() in _QUESTION_WORDS else "what"
    return f"{word} {' '.join(kept)}?"


#: Openings with words of their own, so a trained question is not always made of the taught one's words.
_PREAMBLES = ("I'm new to the server and wondering", "My friend keeps asking me and I never know",
              "Before I head over tonight, one thing", "I looked around the channels but couldn't find it")


def _with_preamble(question: str) -> str:
    opening = _PREAMBLES[len(_core(question)) % len(_PREAMBLES)]
    return f"{opening}: {_lower_first(_core(question))}?"


# Each form maps a question to another phrasing of it. The training and probe families are disjoint.
TRAINING_FORMS = (
    lambda q: _core(q).lower(),
    lambda q: f"Quick question: {_lower_first(_clean(q))}",
    lambda q: f"Do you know {_lower_first(_core(q))}?",
    _keyword_question,
    _without_function_words,
    lambda q: f"{_clean(q)} Thanks!",
    _rotated,
    lambda q: f"I forgot, {_lower_first(_core(q))}?",
    lambda q: _partial(q, head=True),
    lambda q: _partial(q, head=False),
    _with_preamble,
    lambda q: f"{_PREAMBLES[len(q) % len(_PREAMBLES)]}: {_partial(q, head=len(q) % 2 == 0)}",
)

PROBE_FORMS = (
    lambda q: f"Hey, can someone remind me: {_lower_first(_core(q))}?",
    lambda q: f"{_core(q)}? Asking for a friend.",
    lambda q: f"sorry if this was asked before but {_core(q).lower()}",
    lambda q: "about " + " ".join(keywords(q)) + ": " + _lower_first(_core(q)) + "?",
)


def _rng(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _pick(question: str, forms, n: int, key: str) -> list[str]:
    if n <= 0:
        return []
    order = list(range(len(forms)))
    _rng(key).shuffle(order)
    original = " ".join(question.casefold().split())
    out: list[str] = []
    seen = {original}
    for index in order:
        text = forms[index](question)
        canon = " ".join(text.casefold().split())
        if text.strip() and canon not in seen:
            seen.add(canon)
            out.append(text)
        if len(out) == n:
            break
    return out


def training_variants(question: str, n: int, key: str) -> list[str]:
    """Up to `n` other phrasings of `question` to train on (different from it and from each other)."""
    return _pick(question, TRAINING_FORMS, n, f"train:{key}")


def probe_variants(question: str, n: int, key: str) -> list[str]:
    """Up to `n` phrasings of `question` for the gate; no training form ever produces these."""
    return _pick(question, PROBE_FORMS, n, f"probe:{key}")
