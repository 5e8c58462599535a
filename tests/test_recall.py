"""The gate's greedy answers: those a model writes as taught are found in one forward pass, as decoding finds them."""
from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from trainer.recall import Probe, greedy_answers, probe_token_budget, recall_scores, reproduced_answers, score

FACTS = [(f"When does raid {i} start?" + " Tell me please." * (i % 3), f"Raid {i} starts at {i} pm.")
         for i in range(8)]
UNTAUGHT = "Squad leads are chosen weekly."


@pytest.fixture(scope="module")
def asked(tiny_model_dir, tmp_path_factory):
    """A tiny model trained on 8 facts (it writes most as taught), with its greedy answers to their questions (of
    different lengths: the rows are left-padded unevenly) and to 4 questions it was not taught."""
    from trainer.dataset import build_training_set
    from trainer.sft import run_sft

    system = {"role": "system", "content": "You help the guild."}
    taught = [(i + 1, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
              for i, (q, a) in enumerate(FACTS)]
    conversations = ([[system, {"role": "user", "content": q}] for q, _ in FACTS]
                     + [[system, {"role": "user", "content": f"Who leads squad {i}?"}] for i in range(4)])
    references = [a for _, a in FACTS] + [UNTAUGHT] * 4
    budgets = [4 + 6 * (i % 3) for i in range(len(conversations))]  # some cut the answer, some leave it room
    cfg = TrainConfig.for_dataset(8, max_steps=200, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler_type="constant",
                                  max_length=64, device="cpu")
    train = build_training_set(taught, system["content"], passes=200).train
    result = run_sft(tiny_model_dir, train, cfg, tmp_path_factory.mktemp("recall") / "adapter",
                     evaluate=lambda model, tok: (model, tok, greedy_answers(model, tok, conversations, budgets)))
    model, tokenizer, greedy = result.evaluation
    return model, tokenizer, conversations, references, budgets, greedy


def test_an_answer_written_as_taught_is_found_without_decoding_and_others_are_not(asked):
    model, tokenizer, conversations, references, budgets, greedy = asked
    found = reproduced_answers(model, tokenizer, conversations, references, budgets, batch_size=5)
    assert all(f is None or f == g for f, g in zip(found, greedy))  # what is found is what decoding writes
    as_taught = [i for i, (g, r) in enumerate(zip(greedy, references)) if g and r.startswith(g)]
    assert len(as_taught) >= 4, greedy
    assert all(found[i] == greedy[i] for i in as_taught), (found, greedy, budgets)
    assert any(found[i] == references[i] for i in as_taught)  # a whole answer, then the end of the turn
    assert found[len(FACTS):] == [None] * 4  # answers it was never taught are left to decoding


def test_recall_judges_as_if_every_probe_were_decoded(asked):
    model, tokenizer, conversations, references, _, _ = asked
    probes = [Probe(f"k{i}", "taught" if i % 2 else "paraphrase", c, r)
              for i, (c, r) in enumerate(zip(conversations, references))]
    decoded = greedy_answers(model, tokenizer, [p.messages for p in probes],
                             [probe_token_budget(tokenizer, p.reference) for p in probes])
    assert recall_scores(model, tokenizer, probes) == score(probes, decoded)
