"""Approved examples → the rows one run trains on. Every approved example is trained on.

The community's data is facts, not a sample of a distribution: an example held out of training
would never be answered, however often the guild retrains. So nothing is held out; the gate's
evidence comes from recall, paraphrase probes and drift (trainer/gate.py).

A run makes `passes` passes over the examples (trainer/config.py decides how many). Each pass
sees every example once, but not always worded the same: `paraphrase_share` of an example's
copies ask its last question in another phrasing (`trainer.paraphrase.training_variants`), so the
answer is tied to what is asked rather than to one wording. A little general instruction data
written for the project (`trainer/data/general_instructions.json`) is mixed in, `general_share` of
the rows, so learning the community's facts does not wreck everything else: by default its questions
with the base model's own answers (`general_answers="base"`), which keeps the version answering
other questions as the base did (the gate's drift measure), rather than pulling it towards new text.

Conversations are checked with storage's rule (`validate_conversation`), the guild's system prompt
is put first, and duplicates (storage's `content_hash` of the turns) are dropped, keeping the oldest id.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from importlib.resources import files
from itertools import zip_longest
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from serving.notes import NoteIndex, with_notes
from storage.conversation import InvalidConversation, validate_conversation
from trainer.paraphrase import training_variants
from trainer.recall import example_key

if TYPE_CHECKING:
    from datasets import Dataset

Conversation = list[dict[str, str]]
#: `example_id` of rows that are not the guild's (the shipped general instructions).
GENERAL_ROW_ID = 0


@dataclass
class TrainingSet:
    """The rows to train on (columns `messages`, `example_id`, `kind`) and what was decided on the way."""

    train: "Dataset"
    #: The approved examples kept, in id order, with the guild's system prompt: what the gate probes.
    examples: list[tuple[int, Conversation]]
    n_paraphrased: int
    n_general: int
    #: of the paraphrased rows, those the base model reworded (the rest are templated)
    n_reworded: int
    #: A sentence for moderators when something was unusual (dropped examples).
    note: str | None
    dropped_duplicates: list[int] = field(default_factory=list)
    dropped_invalid: dict[int, str] = field(default_factory=dict)
    #: the kept examples as notes (serving/notes.py), shown `notes_per_question` at a time; None: no notes
    note_index: NoteIndex | None = None
    notes_per_question: int = 0

    @property
    def example_ids(self) -> list[int]:
        return [i for i, _ in self.examples]

    def as_served(self, messages: Conversation) -> Conversation:
        """A question as the trained version will be asked it: with its notes, as its rows had them."""
        return with_notes(messages, self.note_index, self.notes_per_question)


def with_system_prompt(turns: Conversation, system_prompt: str | None) -> Conversation:
    """Put the guild's system prompt first unless the example carries its own."""
    if turns[0]["role"] == "system" or not system_prompt or not system_prompt.strip():
        return turns
    return [{"role": "system", "content": system_prompt.strip()}, *turns]


def _general_pairs() -> list[dict[str, str]]:
    return json.loads(files("trainer").joinpath("data/general_instructions.json").read_text(encoding="utf-8"))


def general_questions() -> list[str]:
    """The shipped general instructions' questions."""
    return [p["question"] for p in _general_pairs()]


def general_instructions(answers: Sequence[str] | None = None) -> list[Conversation]:
    """The shipped general instructions as conversations: with their written answers, or with `answers`
    (the base model's own, trainer.drift.prepare_base_answers); pairs with an empty answer are left out."""
    pairs = _general_pairs()
    replies = [p["answer"] for p in pairs] if answers is None else list(answers)
    return [[{"role": "user", "content": p["question"]}, {"role": "assistant", "content": a}]
            for p, a in zip(pairs, replies) if a.strip()]


def _reworded(turns: Conversation, question: str) -> Conversation:
    return [*turns[:-2], {"role": "user", "content": question}, turns[-1]]


def paraphrased_copies(passes: int, paraphrase_share: float) -> int:
    """How many of an example's `passes` copies are asked in other words (`paraphrase_share`, rounded down)."""
    return math.floor(passes * paraphrase_share + 1e-9)


def copies_of(turns: Conversation, passes: int, paraphrase_share: float,
              rewordings: Sequence[str] = ()) -> list[tuple[Conversation, str]]:
    """`passes` copies of one example, `paraphrase_share` of them (rounded down) in other words: the base
    model's `rewordings` of the question (trainer/rewording.py) taking turns with the templated forms."""
    wanted = paraphrased_copies(passes, paraphrase_share)
    templated = training_variants(turns[-2]["content"], wanted, example_key(turns)) if wanted else []
    turns_taken = zip_longest([(r, "reworded") for r in rewordings], [(t, "paraphrase") for t in templated])
    variants = [v for pair in turns_taken for v in pair if v is not None]
    out = [(_reworded(turns, variants[i % len(variants)][0]), variants[i % len(variants)][1])
           for i in range(wanted)] if variants else []
    return [(turns, "taught")] * (passes - len(out)) + out


@dataclass
class UsableExamples:
    """What `usable_examples` kept (in id order, with the system prompt) and what it left out, and why."""

    kept: list[tuple[int, Conversation]]
    duplicates: list[int]
    #: ids of examples whose answer the community voted down (see `superseded`)
    voted_down: list[int]
    #: {id: reason}
    invalid: dict[int, str]


def usable_examples(examples: Iterable[tuple[int, Sequence[dict]]], system_prompt: str | None = None,
                    superseded: frozenset[str] = frozenset()) -> UsableExamples:
    """The examples a run can use: valid by storage's rule, not duplicated, not superseded.

    `superseded`: example keys (`trainer.recall.example_key`) the community voted down — an approved
    disliked answer with the same question and answer: such an example is neither trained on nor probed."""
    usable = UsableExamples([], [], [], {})
    seen: set[str] = set()
    for example_id, messages in sorted(examples, key=lambda pair: pair[0]):
        try:
            turns = validate_conversation(list(messages))
        except InvalidConversation as exc:
            usable.invalid[example_id] = str(exc)
            continue
        key = example_key(turns)
        if key in superseded:
            usable.voted_down.append(example_id)
        elif key in seen:
            usable.duplicates.append(example_id)
        else:
            seen.add(key)
            usable.kept.append((example_id, with_system_prompt(turns, system_prompt)))
    return usable


@dataclass(frozen=True)
class PreferenceRow:
    """One voted answer: the conversation asked (system prompt first), the answer, liked or not."""

    example_id: int
    key: str
    prompt: Conversation
    completion: str
    desirable: bool

    @property
    def conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.completion}]


def preference_rows(examples: Iterable[tuple[int, Sequence[dict], str]], system_prompt: str | None
                    ) -> list[PreferenceRow]:
    """(id, messages, label) of approved preference examples → rows, checked and deduplicated like SFT's."""
    labels = {}
    pairs = []
    for example_id, messages, label in examples:
        labels[example_id] = label
        pairs.append((example_id, messages))
    kept = usable_examples(pairs, system_prompt).kept
    return [PreferenceRow(i, example_key(turns), turns[:-1], turns[-1]["content"], labels[i] == "desirable")
            for i, turns in kept]


def taught_conversations(examples: Iterable[tuple[int, Sequence[dict]]], voted: Iterable[tuple[int, Sequence[dict], str]],
                         system_prompt: str | None = None) -> tuple[list[tuple[int, Conversation]], frozenset[str]]:
    """What the guild has taught, as a run trains on it: the approved demonstrations (id, messages) and the
    approved liked answers of `voted` (id, messages, label: a 👍'd answer is an example the community wrote
    by voting), with the keys of the disliked ones, which supersede a taught example of the same question and
    answer (`usable_examples`). Serving's notes (serving/notes.py) read the same set."""
    votes = preference_rows(voted, system_prompt)
    liked = [(r.example_id, r.conversation) for r in votes if r.desirable]
    return [*examples, *liked], frozenset(r.key for r in votes if not r.desirable)


def build_training_set(examples: Iterable[tuple[int, Sequence[dict]]], system_prompt: str | None = None, *,
                       passes: int | Callable[[int], int] = 1, paraphrase_share: float = 0.0,
                       general: Sequence[Conversation] = (), general_share: float = 0.0,
                       superseded: frozenset[str] = frozenset(),
                       reword: Callable[[list[tuple[int, str]]], Mapping[int, Sequence[str]]] | None = None,
                       notes: int = 0) -> TrainingSet:
    """The rows of ONE guild's run: every usable example `passes` times (or `passes(number kept)`), plus the
    general mix; examples whose answer the community voted down (`superseded` keys) are left out.
    `reword` maps the kept examples' (id, question) to other wordings of it by id (trainer/rewording.py).
    `notes`: each row's question carries that many of the kept examples nearest it (serving/notes.py), as
    it will when served; general rows too, so a version learns to pass over a note that does not answer."""
    from datasets import Dataset

    usable = usable_examples(examples, system_prompt, superseded)
    kept, duplicates, invalid = usable.kept, usable.duplicates, usable.invalid
    if callable(passes):
        passes = passes(len(kept))
    if not kept:
        raise ValueError("no usable examples to train on" + (
            f" ({len(invalid)} invalid: " + "; ".join(f"#{i}: {r}" for i, r in list(invalid.items())[:3]) + ")"
            if invalid else ""))
    wanted = reword is not None and paraphrased_copies(max(1, passes), paraphrase_share) > 0
    rewordings = reword([(i, turns[-2]["content"]) for i, turns in kept]) if wanted else {}
    rows: list[tuple[int, Conversation, str]] = []
    for example_id, turns in kept:
        rows.extend((example_id, copy, kind) for copy, kind in copies_of(
            turns, max(1, passes), paraphrase_share, rewordings.get(example_id, ())))
    n_paraphrased = sum(kind in ("paraphrase", "reworded") for _, _, kind in rows)
    n_reworded = sum(kind == "reworded" for _, _, kind in rows)
    n_general = 0
    if general and general_share > 0:
        n_general = min(round(general_share * len(rows) / (1 - general_share)), len(general) * max(1, passes))
        # in a fixed shuffled order, so a run that needs fewer rows than the mix holds still samples all of it
        # (the first rows alone would leave out whatever kind of instruction the file lists last)
        order = list(range(len(general)))
        random.Random(0).shuffle(order)
        rows.extend((GENERAL_ROW_ID, with_system_prompt(list(general[order[i % len(general)]]), system_prompt),
                     "general")
                    for i in range(n_general))
    index = NoteIndex.of_conversations(turns for _, turns in kept) if notes > 0 else None
    if index is not None:
        rows = [(i, with_notes(turns, index, notes), kind) for i, turns, kind in rows]
    remarks = []
    if duplicates:
        remarks.append(f"{len(duplicates)} duplicate example(s) skipped")
    if usable.voted_down:
        remarks.append(f"{len(usable.voted_down)} example(s) left out: their answer was voted down")
    if invalid:
        remarks.append(f"{len(invalid)} unusable example(s) skipped (" + "; ".join(
            f"#{i}: {r}" for i, r in list(invalid.items())[:3]) + ")")
    train = Dataset.from_dict({"messages": [t for _, t, _ in rows], "example_id": [i for i, _, _ in rows],
                               "kind": [k for _, _, k in rows]})
    return TrainingSet(train=train, examples=kept, n_paraphrased=n_paraphrased, n_general=n_general,
                       n_reworded=n_reworded, note="; ".join(remarks) or None, dropped_duplicates=duplicates,
                       dropped_invalid=invalid, note_index=index, notes_per_question=notes if index else 0)
