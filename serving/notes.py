"""The guild's taught answers nearest a question, shown to the model beside it ("notes").

Why: a small base learns a taught answer for the taught wording, and members ask in other words.
On the 270M embedded base, trained LoRA alone answered about 40% of hand-written paraphrases of 48
taught facts, and most misses gave the answer of another fact (bench/RESULTS.md). Finding the taught
examples whose words the question shares is cheap and fairly sure (the right fact is among the three
best for 91% of those paraphrases). So each question carries a few of them (TrainConfig.notes) in its system
message, in training (trainer/dataset.py, every row, so the model learns both to use a note and to
pass over one that does not answer) and in serving (/ask, `guildtune ask`, the demo, the gate's
probes) alike. Notes come from the approved examples at the time of asking, so an example a member
deleted with /forget is never shown again, and a version is served with notes only if it was trained
with them (`version_note_count`).

Matching is BM25 over content-word stems (the first 4 letters of a word; character pairs for scripts
written without spaces) of what a note shows: the start of each example's last question and answer.
It is linear in the question's words, and a term found in more than MAX_POSTINGS examples is not
looked up, so one search costs at most that many steps a word however large the guild.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from trainer.paraphrase import FUNCTION_WORDS
from trainer.recall import judge_words

#: Notes are shown only when one of them holds at least this share of the question's term weight; then the
#: best `count` are shown, the others sharing any term with it: a question asked in other words often finds
#: its fact second or third, by fewer of its words (bench/RESULTS.md, "Session 9").
MIN_MATCH = 0.15
#: Words of a taught question, and of its answer, that a note shows: the start of a long answer is what a
#: short reply needs, and a long question (a pasted text) is found by its start; it keeps a big import's
#: rows from doubling in length.
NOTE_WORDS = 30
#: Letters of a word that make its stem ("founder" and "founded" meet at "foun").
STEM_LETTERS = 4
#: A term found in more examples than this carries little evidence and is not looked up: what bounds the
#: work of one search (a training run searches once per row) however large the guild.
MAX_POSTINGS = 500
HEADER = "Taught answers:"
_K1, _B = 1.2, 0.75


def _spaceless(char: str) -> bool:
    """Letters of scripts written without spaces between words (CJK, kana, Thai...)."""
    return char.isalpha() and (ord(char) >= 0x2E80 or 0x0E00 <= ord(char) <= 0x0EFF)


def terms(text: str) -> list[str]:
    """The text's search terms: content-word stems, and character pairs inside space-less runs."""
    out: list[str] = []
    words = judge_words(text)
    # a lone letter ("who's" gives "s") is no evidence of a topic
    content = [w for w in words if w not in FUNCTION_WORDS and (len(w) > 1 or _spaceless(w))]
    for word in content or words:
        if any(_spaceless(c) for c in word):
            chars = [c for c in word if c.isalnum()]
            out.extend(a + b for a, b in zip(chars, chars[1:])) if len(chars) > 1 else out.extend(chars)
        else:
            out.append(word[:STEM_LETTERS])
    return out


@dataclass(frozen=True)
class Note:
    question: str
    answer: str


def _short(text: str) -> str:
    words = text.split()
    return text.strip() if len(words) <= NOTE_WORDS else " ".join(words[:NOTE_WORDS]) + " …"


def last_exchange(turns: Sequence[dict[str, str]]) -> tuple[str, str] | None:
    """An example's last question and its answer, or None when it does not end with one."""
    if len(turns) >= 2 and turns[-2].get("role") == "user" and turns[-1].get("role") == "assistant":
        return turns[-2]["content"], turns[-1]["content"]
    return None


class NoteIndex:
    """The guild's taught (question, answer) pairs, searchable by a question's words."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self.notes: list[Note] = []
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths: list[int] = []
        seen: set[tuple[str, str]] = set()
        for question, answer in pairs:
            if (question, answer) in seen:
                continue
            seen.add((question, answer))
            note = Note(_short(question), _short(answer))  # matched on what it shows
            counts = Counter(terms(f"{note.question} {note.answer}"))
            for term, n in counts.items():
                self._postings[term].append((len(self.notes), n))
            lengths.append(sum(counts.values()))
            self.notes.append(note)
        self._lengths = lengths
        self._mean_length = (sum(lengths) / len(lengths)) if lengths else 1.0
        n = len(self.notes)
        self._idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()}
        self._unseen_idf = math.log(1 + (n + 0.5) / 0.5)

    @classmethod
    def of_conversations(cls, conversations: Iterable[Sequence[dict[str, str]]]) -> "NoteIndex":
        return cls(pair for pair in map(last_exchange, conversations) if pair is not None)

    def __len__(self) -> int:
        return len(self.notes)

    def find(self, question: str, count: int) -> list[Note]:
        """Up to `count` notes for `question`, best first, when one of them matches at least MIN_MATCH of its
        terms; none otherwise."""
        wanted = set(terms(question))
        if count <= 0 or not wanted or not self.notes:
            return []
        total = sum(self._idf.get(t, self._unseen_idf) for t in wanted)
        scores: dict[int, float] = defaultdict(float)
        matched: dict[int, float] = defaultdict(float)
        for term in wanted:
            postings = self._postings.get(term)
            if not postings or len(postings) > MAX_POSTINGS:
                continue
            idf = self._idf[term]
            for index, n in postings:
                norm = _K1 * (1 - _B + _B * self._lengths[index] / self._mean_length)
                scores[index] += idf * n * (_K1 + 1) / (n + norm)
                matched[index] += idf
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        if not any(matched[i] >= MIN_MATCH * total for i in ranked):
            return []
        return [self.notes[i] for i in ranked[:count]]


def notes_block(notes: Sequence[Note]) -> str:
    return HEADER + "".join(f"\nQ: {n.question}\nA: {n.answer}" for n in notes)


def with_notes(messages: list[dict[str, str]], index: NoteIndex | None, count: int) -> list[dict[str, str]]:
    """`messages` with the notes for its last question (a training row ends with its answer) added to its
    system message (one is made if there is none); unchanged when nothing matches, `index` is None or
    `count` is 0."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), None)
    if index is None or count <= 0 or question is None:
        return messages
    found = index.find(question, count)
    if not found:
        return messages
    block = notes_block(found)
    if messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def version_note_count(version: Any) -> int:
    """How many notes a version was trained with, so it is served the same way (0: none, or before notes)."""
    metrics = getattr(version, "metrics", None) or {}
    value = metrics.get("notes", 0) if isinstance(metrics, dict) else 0
    return value if isinstance(value, int) and value > 0 else 0
