"""Does a model answer what it was taught? Greedy answers, judged against the taught answer.

The gate asks a candidate (and, for a first version, the base model) a stable sample of the
guild's approved questions, as taught and in the probe phrasings of `trainer.paraphrase`, and
records per example whether the answer carries the taught answer's content. A version's record
is kept in its metrics, so the next candidate is compared with what the active version knew
without loading it again.

The judge (`knows`) is a bag-of-words recall: the share of the taught answer's first content
words found in the model's answer. It is linear in the text's length, needs no model, and
rewards a right fact in other words less than a verbatim one, which is the safe side for a gate.
"""
from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from trainer.paraphrase import FUNCTION_WORDS, probe_variants

#: An answer "knows" the taught answer when it holds at least this share of its content words.
KNOWS_THRESHOLD = 0.6
#: Only the start of a long taught answer is judged (the probe's answer is short).
REFERENCE_WORDS = 24
#: Tokens a probe's answer may take beyond the taught answer's own length, and at most in all.
EXTRA_ANSWER_TOKENS = 6
MAX_PROBE_TOKENS = 36


def judge_words(text: str) -> list[str]:
    """NFKC-casefolded word tokens; anything but letters, digits, '#' and '@' separates words."""
    text = unicodedata.normalize("NFKC", text).casefold()
    chars = [c if (c.isalnum() or c in "#@") else " " for c in text]
    return "".join(chars).split()


def content_words(text: str) -> list[str]:
    words = judge_words(text)
    kept = [w for w in words if w not in FUNCTION_WORDS]
    return kept or words


def answer_overlap(reference: str, answer: str) -> float:
    """Share of the reference's first content words (with multiplicity) that the answer contains."""
    wanted = Counter(content_words(reference)[:REFERENCE_WORDS])
    if not wanted:
        return 0.0
    have = Counter(judge_words(answer))
    return sum(min(n, have[w]) for w, n in wanted.items()) / sum(wanted.values())


def knows(reference: str, answer: str) -> bool:
    return answer_overlap(reference, answer) >= KNOWS_THRESHOLD


@dataclass(frozen=True)
class Probe:
    """One question put to a model: `key` names the example (content hash) and the form."""

    key: str
    kind: str  # "taught" or "paraphrase"
    messages: list[dict[str, str]]
    reference: str


def example_key(turns: Sequence[dict[str, str]]) -> str:
    """A short stable name for an example's content (its turns without the system prompt)."""
    from storage.conversation import content_hash

    return content_hash([t for t in turns if t["role"] != "system"])[:16]


def _sample_rank(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"guildtune-probe:{key}".encode()).digest()[:8], "big")


def build_probes(conversations: Iterable[Sequence[dict[str, str]]], sample: int) -> list[Probe]:
    """Taught and paraphrased probes for a stable sample of `sample` conversations.

    The sample is the conversations with the smallest hash of their key, so it stays the same as
    the data grows (a new example enters only by displacing one), and candidate and active version
    are compared on the same questions. Each probe keeps the conversation's earlier turns and its
    system prompt, and asks its last question.
    """
    keyed = sorted(((example_key(c), list(c)) for c in conversations), key=lambda kc: _sample_rank(kc[0]))
    probes: list[Probe] = []
    for key, turns in keyed[:max(0, sample)]:
        *context, question, answer = turns
        probes.append(Probe(key, "taught", [*context, question], answer["content"]))
        for variant in probe_variants(question["content"], 1, key):
            probes.append(Probe(key, "paraphrase", [*context, {"role": "user", "content": variant}],
                                answer["content"]))
    return probes


@dataclass
class RecallScores:
    """Per-example results of one model on the probes: {example key: knew it}, by kind."""

    taught: dict[str, bool]
    paraphrase: dict[str, bool]

    @staticmethod
    def share(results: dict[str, bool]) -> float | None:
        return sum(results.values()) / len(results) if results else None

    def to_metrics(self) -> dict[str, Any]:
        return {"taught_recall": self.share(self.taught), "paraphrase_recall": self.share(self.paraphrase),
                "taught_known": sorted(k for k, v in self.taught.items() if v),
                "paraphrase_known": sorted(k for k, v in self.paraphrase.items() if v),
                "probed": sorted(self.taught)}


def score(probes: Sequence[Probe], answers: Sequence[str]) -> RecallScores:
    taught: dict[str, bool] = {}
    paraphrase: dict[str, bool] = {}
    for probe, answer in zip(probes, answers, strict=True):
        (taught if probe.kind == "taught" else paraphrase)[probe.key] = knows(probe.reference, answer)
    return RecallScores(taught, paraphrase)


def probe_token_budget(tokenizer: Any, reference: str) -> int:
    n = len(tokenizer(reference, add_special_tokens=False)["input_ids"])
    return max(8, min(MAX_PROBE_TOKENS, n + EXTRA_ANSWER_TOKENS))


def greedy_answers(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                   max_new_tokens: Sequence[int], batch_size: int = 64) -> list[str]:
    """Greedy answers to each conversation, decoded in left-padded batches of similar length.

    The prompt is built as the in-process server builds it (`serving.generation.render_prompt`), so
    the gate hears what `/ask` would answer with greedy decoding.
    """
    import torch

    from serving.generation import pad_token_id, render_prompt, stop_token_ids

    device = next(model.parameters()).device
    prompts = [render_prompt(tokenizer, list(c), "cpu")["input_ids"][0].tolist() for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: (max_new_tokens[i], len(prompts[i])))
    pad = pad_token_id(tokenizer)
    stops = stop_token_ids(tokenizer, model)
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(prompts[i])
                ids[r, width - n:] = torch.tensor(prompts[i])
                attention[r, width - n:] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device),
                                     max_new_tokens=max(max_new_tokens[i] for i in rows), do_sample=False,
                                     temperature=None, top_p=None, top_k=None, eos_token_id=stops,
                                     pad_token_id=pad)
            for r, i in enumerate(rows):
                new = out[r, width:width + max_new_tokens[i]].tolist()
                answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers


def reproduced_answers(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                       references: Sequence[str], max_new_tokens: Sequence[int], batch_size: int = 64
                       ) -> list[str | None]:
    """Each conversation's greedy answer where that answer is its reference, found without decoding; else None.

    Greedy decoding is deterministic: when the model, fed the reference after the prompt, ranks the reference's
    next token first at every position (and then a stop token, unless the budget ends first), greedy decoding
    writes exactly the reference. One forward pass over prompt + reference checks that, where decoding takes a
    pass per token: a trained candidate's right answers cost the price of their prompt (60 probes with notes
    on the CPU: bench/RESULTS.md "Session 10"). Rows are left-padded so every prompt ends in the same column
    and only the answer's positions are projected. One pass and a decode loop round alike, so they agree up to
    near-ties in the machine's dtype, as any two batchings of the same questions do.
    """
    import torch

    from serving.chat_encoding import encode_chat
    from serving.generation import pad_token_id, stop_token_ids
    from trainer.sft import EVAL_LOGITS_BUDGET

    stops = set(stop_token_ids(tokenizer, model))
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    rows = []  # (index, prompt ids, the tokens greedy decoding must write, the answer's tokens)
    for i, (conversation, reference, budget) in enumerate(zip(conversations, references, max_new_tokens, strict=True)):
        prompt = encode_chat(tokenizer, list(conversation), add_generation_prompt=True).input_ids
        full = encode_chat(tokenizer, [*conversation, {"role": "assistant", "content": reference}]).input_ids
        after = full[len(prompt):]
        end = next((j for j, t in enumerate(after) if t in stops), None)
        if full[:len(prompt)] != prompt or end is None or end == 0:
            continue
        answer = after[:min(end, budget)]
        rows.append((i, prompt, after[:end + 1] if end < budget else answer, answer))
    rows.sort(key=lambda r: len(r[1]))
    per_batch = max(1, min(batch_size, EVAL_LOGITS_BUDGET // ((MAX_PROBE_TOKENS + 1) * vocab * 4)))
    found: list[str | None] = [None] * len(conversations)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), per_batch):
            batch = rows[start:start + per_batch]
            width_prompt = max(len(r[1]) for r in batch)
            checked = max(len(r[2]) for r in batch)
            ids = torch.full((len(batch), width_prompt + checked - 1), pad, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for b, (_, prompt, want, _) in enumerate(batch):
                fed = prompt + want[:-1]
                at = width_prompt - len(prompt)
                ids[b, at:at + len(fed)] = torch.tensor(fed)
                attention[b, at:at + len(fed)] = 1
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                               position_ids=positions.to(device),
                               logits_to_keep=torch.arange(width_prompt - 1, width_prompt - 1 + checked,
                                                           device=device)).logits
            ranked_first = logits.argmax(-1).tolist()
            for b, (i, _, want, answer) in enumerate(batch):
                guess = ranked_first[b][:len(want)]
                if guess[:len(answer)] == answer and (len(want) == len(answer) or guess[-1] in stops):
                    found[i] = tokenizer.decode(answer, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return found


def recall_scores(model: Any, tokenizer: Any, probes: Sequence[Probe], batch_size: int = 64, *,
                  taught: bool = True) -> RecallScores:
    """Ask `model` every probe greedily and judge the answers. A model that was `taught` these answers (a
    candidate, a version) has those it writes as taught found in one pass (`reproduced_answers`); the base,
    never taught them, is only decoded."""
    if not probes:
        return RecallScores({}, {})
    budgets = [probe_token_budget(tokenizer, p.reference) for p in probes]
    answers: list[str | None] = [None] * len(probes)
    if taught:
        answers = reproduced_answers(model, tokenizer, [p.messages for p in probes], [p.reference for p in probes],
                                     budgets, batch_size)
    left = [i for i, a in enumerate(answers) if a is None]
    decoded = greedy_answers(model, tokenizer, [probes[i].messages for i in left], [budgets[i] for i in left],
                             batch_size)
    for i, answer in zip(left, decoded):
        answers[i] = answer
    return score(probes, answers)
