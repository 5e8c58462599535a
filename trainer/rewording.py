"""Taught questions reworded by the base model itself, to train on beside the templated rewordings.

The templated forms of `trainer.paraphrase` teach the adapter to ignore word order and filler, not
other words for the same thing: members ask "who started this server?" where the moderator taught
"Who founded the Copperfield Makers?". The base model knows such synonyms. Asked with a few
examples of rewording (plain text, so a pretrained base without a chat template follows it too),
it writes other wordings of each taught question; those that still ask the same thing (a question with the
same question word, sharing most of the original's content words) are trained on with the taught answer.

Asking costs minutes on a 2-core CPU, so the rewordings are kept in the database beside their
example (storage's `example_rewordings`: deleted and `/forget`-wiped with it, as they are community
text), and a retrain asks the base only about new or edited questions. Sampling is seeded.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trainer.paraphrase import keywords

log = logging.getLogger("trainer.rewording")

#: Written for the project: each pair asks the same thing in other words (not taken from a data set).
_SHOTS = (
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    ("Who wrote the welcome guide?", "Who is the author of the welcome guide?"),
    ("Where is the nearest train station?", "Which train station is closest to here?"),
    ("When does the library open on Saturdays?", "What time can I get into the library on a Saturday?"),
    ("What is the fee for the pottery class?", "What does the pottery course cost?"),
)
#: Bump when the prompt or the filter changes: rewordings kept under the old key are made again.
PROMPT_VERSION = 1
_HEADER = "Each question is asked again in other words, with the same meaning.\n\n"
#: Words a rewording may have beyond the original's (longer ones wander off the question).
_EXTRA_WORDS = 12
#: Share of the original's content words a rewording must keep (by their first letters, so that
#: "founder" keeps "founded"): below it, the model changed the question, not its wording.
_KEEP_SHARE = 0.6
_STEM = 5
_MAX_NEW_TOKENS = 32
#: A rewording keeps the question's kind: "Who founded X?" reworded as "Where does X meet?" is another question.
_QUESTION_WORDS = ("who", "what", "where", "when", "which", "how", "why")


def prompt_for(question: str) -> str:
    shots = "".join(f"Question: {q}\nIn other words: {r}\n\n" for q, r in _SHOTS)
    return f"{_HEADER}{shots}Question: {' '.join(question.split())}\nIn other words:"


def _normalised(text: str) -> str:
    """`text` casefolded with its spaces collapsed: how two wordings are told apart."""
    return " ".join(text.casefold().split())


def _stems(text: str) -> set[str]:
    return {w[:_STEM] for w in keywords(text)}


def accepted(question: str, text: str) -> str | None:
    """The rewording in `text` (the model's continuation) if it still asks `question`, else None."""
    line = text.strip().split("\n", 1)[0].strip().strip("\"'“”")
    if not line.endswith("?") or len(line.split()) > len(question.split()) + _EXTRA_WORDS:
        return None
    if _normalised(line) == _normalised(question):
        return None
    wanted = _stems(question)
    if not wanted or len(wanted & _stems(line)) < _KEEP_SHARE * len(wanted):
        return None
    asks = _question_word(question)
    if asks is not None and asks != _question_word(line):
        return None
    return line


def _question_word(text: str) -> str | None:
    """The first question word of `text`, if any."""
    for word in text.casefold().split():
        word = word.strip("\"'(),.;:!?")
        if word in _QUESTION_WORDS:
            return word
    return None


def reword(model: Any, tokenizer: Any, questions: Sequence[str], n: int, seed: int,
           batch_size: int = 32) -> dict[str, list[str]]:
    """Up to `n` accepted rewordings of each question (sampled, seeded), different from each other."""
    import torch

    from serving.generation import pad_token_id

    device = next(model.parameters()).device
    unique = list(dict.fromkeys(questions))
    # a rewording is one line: stop at any token holding a line break ("?\n\n" is one token in Gemma's vocabulary)
    stops = [i for token, i in tokenizer.get_vocab().items() if "\n" in token]
    stops += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pad = pad_token_id(tokenizer)
    samples = n + 1  # some samples fail `accepted` on a small base
    out: dict[str, list[str]] = {q: [] for q in unique}
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            encoded = [tokenizer(prompt_for(q))["input_ids"] for q in batch]
            width = max(map(len, encoded))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, row in enumerate(encoded):
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            with torch.inference_mode():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     temperature=0.9, top_k=40, top_p=None,  # top-p would sort the vocabulary
                                     max_new_tokens=_MAX_NEW_TOKENS,
                                     num_return_sequences=samples, eos_token_id=stops, pad_token_id=pad)
            for r, q in enumerate(batch):
                seen = {_normalised(q)}
                for s in range(samples):
                    text = tokenizer.decode(gen[r * samples + s, width:].tolist(), skip_special_tokens=True)
                    line = accepted(q, text)
                    if line is not None and _normalised(line) not in seen and len(out[q]) < n:
                        seen.add(_normalised(line))
                        out[q].append(line)
    finally:
        model.train(was_training)
    return out


def base_rewordings(base_dir: str | Path, cfg: Any, questions: Sequence[str]) -> dict[str, list[str]]:
    """`cfg.base_rewordings` rewordings of each question by the base model (loaded for this), or {} when off."""
    if cfg.base_rewordings <= 0 or not questions:
        return {}
    from trainer.sft import evaluation_model

    with evaluation_model(base_dir, None, cfg) as (model, tokenizer):
        found = reword(model, tokenizer, questions, cfg.base_rewordings, cfg.seed)
    log.info("the base reworded %d of %d questions (%d rewordings)", sum(bool(v) for v in found.values()),
             len(found), sum(map(len, found.values())))
    return found


def store_key(base_dir: str | Path, cfg: Any) -> str:
    """Under which name a run's rewordings are kept: the base model, how many, and the prompt's version."""
    from trainer.drift import base_fingerprint

    return f"{base_fingerprint(base_dir)}:{cfg.base_rewordings}:{PROMPT_VERSION}"


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()[:16]


@dataclass
class Rewordings:
    """A run's `reword` (trainer/dataset.py): the rewordings `kept` in the database for the same example and
    question, and the base asked now about the rest; what it made is in `made`, for the job to keep."""

    base_dir: str | Path
    cfg: Any
    #: {example id: (question hash, rewordings)}, as `ExampleRepository.rewordings` returns them
    kept: dict[int, tuple[str, list[str]]]
    made: dict[int, tuple[str, list[str]]] = field(default_factory=dict)

    def __call__(self, items: Sequence[tuple[int, str]]) -> dict[int, list[str]]:
        if self.cfg.base_rewordings <= 0:
            return {}
        out: dict[int, list[str]] = {}
        missing: list[tuple[int, str, str]] = []
        for example_id, question in items:
            digest = question_hash(question)
            hit = self.kept.get(example_id)
            if hit is not None and hit[0] == digest:
                out[example_id] = hit[1]
            else:
                missing.append((example_id, question, digest))
        found = base_rewordings(self.base_dir, self.cfg, [q for _, q, _ in missing]) if missing else {}
        for example_id, question, digest in missing:
            out[example_id] = found.get(question, [])
            self.made[example_id] = (digest, out[example_id])  # none accepted is kept too: not asked again
        return out
