"""Review rounds: after the scheduled passes, more passes for the taught answers not yet learned.

The step policy gives every example the same number of passes, but facts do not stick equally: some
are learned in two passes, some need six. So after the scheduled passes the trainer checks every
taught example teacher-forced (one forward pass, no generation): an example is *reproduced* when
each token of its answer is the model's first choice given the question and the answer so far,
which is exactly when a greedy answer to the taught question starts with the taught answer. The
examples not reproduced get `review_passes` more copies each (some asked in other words, as in the
main passes) with the general mix's share of replayed rows, trained as a short run of their own
(the run's optimizer, its moments kept, restarted at `review_lr_scale` of the learning rate on a new
schedule without warm-up); then they are checked again, for up to
`review_rounds` rounds. Only the examples missed are trained again, so a round costs a few steps,
not another pass over everything; and all rounds together take at most `review_max_share` of the
scheduled steps, so a large import of long answers (rarely word-perfect after one pass) is not
trained over again. The check covers the first `MAX_PROBE_TOKENS` tokens of the last answer: as far
as the gate lets a probe's greedy answer run.

A run's metrics keep each round (checked, missed, steps) so a moderator can see how many answers
were word-perfect after the passes and how many needed review.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from trainer.config import TrainConfig
from trainer.dataset import GENERAL_ROW_ID, Conversation, copies_of
from trainer.recall import MAX_PROBE_TOKENS

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("trainer.review")


@dataclass(frozen=True)
class ReviewRound:
    """One round: how many taught examples were checked, how many were not reproduced, the steps trained."""

    checked: int
    missed: int
    steps: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def taught_examples(train_ds: "Dataset") -> dict[int, Conversation]:
    """{example id: the example as taught} from a run's rows (columns `messages`, `example_id`, `kind`)."""
    out: dict[int, Conversation] = {}
    for messages, example_id, kind in zip(train_ds["messages"], train_ds["example_id"], train_ds["kind"]):
        if kind == "taught" and example_id != GENERAL_ROW_ID:
            out.setdefault(example_id, messages)
    return out


def judged_positions(labels: list[int], limit: int) -> list[int]:
    """Positions whose logits predict the first `limit` tokens of the last answer (the one a probe asks for).

    `labels` is a row's labels (-100 off the answers); position p predicts token p + 1."""
    end = len(labels)
    while end > 0 and labels[end - 1] == -100:
        end -= 1
    start = end
    while start > 1 and labels[start - 1] != -100:
        start -= 1
    return [p - 1 for p in range(start, min(end, start + limit))]


def not_reproduced(model, tokenizer, examples: dict[int, Conversation], max_length: int,
                   batch_size: int) -> list[int]:
    """Ids of the examples whose last answer `model` does not reproduce, teacher-forced, over the first
    `MAX_PROBE_TOKENS` tokens (as far as the gate's probes let a greedy answer run)."""
    from trainer.sft import encode_conversation, labelled_logits

    ids = list(examples)
    encoded = [encode_conversation(tokenizer, examples[i], max_length) for i in ids]
    reproduced: set[int] = set()
    for rows, logits, gold, positions in labelled_logits(model, tokenizer, encoded, batch_size):
        column = {p: c for c, p in enumerate(positions)}
        right = (logits.argmax(dim=-1) == gold).tolist()
        for r, i in enumerate(rows):
            judged = judged_positions(encoded[i]["labels"], MAX_PROBE_TOKENS)
            if judged and all(right[r][column[p]] for p in judged):
                reproduced.add(ids[i])
    return [i for i in ids if i not in reproduced]


def review_rows(train_ds: "Dataset", examples: dict[int, Conversation], missed: list[int],
                cfg: TrainConfig) -> "Dataset":
    """A round's rows: `review_passes` copies of each missed example and the general mix's share of replay."""
    from datasets import Dataset

    rows: list[tuple[int, Conversation, str]] = []
    for example_id in missed:
        rows.extend((example_id, copy, kind)
                    for copy, kind in copies_of(examples[example_id], cfg.review_passes, cfg.paraphrase_share))
    general = [m for m, kind in zip(train_ds["messages"], train_ds["kind"]) if kind == "general"]
    if general and cfg.general_share > 0:
        n_general = min(len(general), round(cfg.general_share * len(rows) / (1 - cfg.general_share)))
        rows.extend((GENERAL_ROW_ID, general[i], "general") for i in range(n_general))
    return Dataset.from_dict({"messages": [m for _, m, _ in rows], "example_id": [i for i, _, _ in rows],
                              "kind": [k for _, _, k in rows]})


def restarted(optimizer, peak_lr: float):
    """The run's optimizer, unwrapped from accelerate's wrapper (the Trainer wraps it again), its moments kept,
    restarting at `peak_lr`; and no scheduler (the Trainer makes one for the round).

    The moments matter: a fresh Adam's first steps move every adapter weight by the full learning rate
    whatever its gradient, which wrecked what the passes had taught (measured: 24 of 48 answers word-perfect
    before a round with a fresh optimizer, 0 of 48 after it)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak_lr
    return optimizer, None


def run_review(prepared, train_ds: "Dataset", cfg: TrainConfig, step_budget: int,
               on_round_start: Callable[[int], None], cancelled: Callable[[], bool]) -> list[ReviewRound]:
    """Up to `cfg.review_rounds` rounds on `prepared.trainer` after its scheduled passes (see the module).

    `step_budget`: optimizer steps the rounds may take in all. `on_round_start(steps)`
    is told each round's steps before it trains (the run's progress grows by them)."""
    if cfg.review_rounds < 1 or "example_id" not in train_ds.column_names:
        return []
    from trainer.sft import tokenize_conversations

    trainer, tokenizer = prepared.trainer, prepared.tokenizer
    examples = taught_examples(train_ds)
    checking = dict(examples)
    rounds: list[ReviewRound] = []
    for _ in range(cfg.review_rounds):
        if cancelled() or not checking or step_budget < 1:
            break
        missed = not_reproduced(trainer.model, tokenizer, checking, cfg.max_length, cfg.eval_batch_size)
        if not missed:
            rounds.append(ReviewRound(len(checking), 0, 0))
            break
        rows = tokenize_conversations(review_rows(train_ds, examples, missed, cfg), tokenizer, cfg.max_length)
        if trainer.args.packing:  # the same layout as the main passes (TRL packs its rows when it is built)
            from trl.data_utils import pack_dataset

            rows = pack_dataset(rows.select_columns(["input_ids", "labels"]), trainer.args.max_length,
                                trainer.args.packing_strategy)
        per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        steps = min(math.ceil(len(rows) / per_step), step_budget)
        step_budget -= steps
        rounds.append(ReviewRound(len(checking), len(missed), steps))
        log.info("review: %d of %d taught answers not reproduced; %d more steps on them", len(missed),
                 len(checking), steps)
        on_round_start(steps)
        trainer.train_dataset = rows
        trainer.args.max_steps = steps
        trainer.args.warmup_steps = 0
        trainer.optimizer, trainer.lr_scheduler = restarted(trainer.optimizer, cfg.learning_rate * cfg.review_lr_scale)
        trainer.train()
        checking = {i: examples[i] for i in missed}
    return rounds
