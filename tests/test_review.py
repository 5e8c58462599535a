"""Review rounds (trainer/review.py): the taught answers not yet reproduced get more training, on the tiny model."""
from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from trainer.dataset import GENERAL_ROW_ID, build_training_set
from trainer.recall import greedy_answers
from trainer.review import not_reproduced, review_rows, taught_examples
from trainer.sft import prepare_trainer, run_sft

SYSTEM = "You help the guild."


def facts(n: int, offset: int = 0):
    return [(i + 1 + offset, [{"role": "user", "content": f"When does raid {i + offset} start?"},
                              {"role": "assistant", "content": f"Raid {i + offset} starts at {i % 10} pm. Bring potions."}])
            for i in range(n)]


def cfg_for(n: int, **kw) -> TrainConfig:
    kw.setdefault("learning_rate", 1e-2)
    return TrainConfig.for_dataset(n, max_length=128, lora_r=8, lora_alpha=16, warmup_ratio=0.0,
                                   lr_scheduler_type="constant", device="cpu", **kw)


def test_the_check_agrees_with_greedy_answers(tiny_model_dir, tmp_path):
    """'Reproduced' is exactly 'a greedy answer to the taught question starts with the taught answer'."""
    learned = build_training_set(facts(4), SYSTEM, passes=30)
    cfg = cfg_for(len(learned.train), num_epochs=1, review_rounds=0)
    prepared = prepare_trainer(tiny_model_dir, learned.train, cfg, tmp_path / "w")
    prepared.trainer.train()
    model, tokenizer = prepared.trainer.model, prepared.tokenizer
    examples = {i: turns for i, turns in [*learned.examples, *build_training_set(facts(4, offset=50), SYSTEM).examples]}
    missed = set(not_reproduced(model, tokenizer, examples, 128, 3))
    answers = greedy_answers(model, tokenizer, [turns[:-1] for turns in examples.values()], [24] * len(examples))
    starts = {i: a.startswith(turns[-1]["content"]) for (i, turns), a in zip(examples.items(), answers)}
    assert {i for i, ok in starts.items() if not ok} == missed
    assert missed and len(missed) < len(examples)  # both outcomes occur, so the agreement means something
    assert all(i in missed for i in range(51, 55))  # never-taught facts are not "reproduced"


def test_review_rows_copy_each_missed_example_and_keep_the_general_share():
    general = [[{"role": "user", "content": f"General {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
               for i in range(20)]
    training = build_training_set(facts(6), SYSTEM, passes=4, paraphrase_share=0.5, general=general,
                                  general_share=0.2)
    examples = taught_examples(training.train)
    assert sorted(examples) == [1, 2, 3, 4, 5, 6] and examples[3] == dict(training.examples)[3]
    cfg = TrainConfig(review_passes=2, paraphrase_share=0.5, general_share=0.2)
    rows = review_rows(training.train, examples, [2, 5], cfg)
    by_id = {}
    for example_id, kind, messages in zip(rows["example_id"], rows["kind"], rows["messages"]):
        by_id.setdefault(example_id, []).append((kind, messages))
    assert sorted(by_id) == [GENERAL_ROW_ID, 2, 5]
    for example_id in (2, 5):
        kinds = sorted(k for k, _ in by_id[example_id])
        assert kinds == ["paraphrase", "taught"]
        asked = [m[-2]["content"] for _, m in by_id[example_id]]
        assert examples[example_id][-2]["content"] in asked and len(set(asked)) == 2
        assert all(m[-1] == examples[example_id][-1] and m[0]["content"] == SYSTEM for _, m in by_id[example_id])
    assert len(by_id[GENERAL_ROW_ID]) == 1  # 0.2 of 5 rows: one replayed general row per four taught


def test_a_run_reviews_what_it_missed_and_the_progress_counts_on(tiny_model_dir, tmp_path):
    training = build_training_set(facts(10), SYSTEM, passes=1)
    progress = []
    cfg = cfg_for(len(training.train), num_epochs=1, per_device_batch_size=2, review_rounds=2, review_passes=3,
                  review_max_share=1.0, learning_rate=5e-3)
    result = run_sft(tiny_model_dir, training.train, cfg, tmp_path / "out", on_progress=lambda *a: progress.append(a))
    scheduled = cfg.total_steps(len(training.train))
    first, *rest = result.review
    assert first["checked"] == 10 and first["missed"] > 0 and first["steps"] > 0
    if rest:  # the second round checks only what the first one missed
        assert rest[0]["checked"] == first["missed"]
    assert result.steps == scheduled + sum(r["steps"] for r in result.review) == result.total_steps
    steps = [p[0] for p in progress]
    assert steps == list(range(1, result.steps + 1))  # one bar: the review's steps count on after the passes
    assert progress[-1][1] == result.steps and progress[-1][3] == 0
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_no_review_when_turned_off_or_out_of_steps(tiny_model_dir, tmp_path):
    training = build_training_set(facts(6), SYSTEM, passes=1)
    off = run_sft(tiny_model_dir, training.train, cfg_for(6, num_epochs=1, review_rounds=0), tmp_path / "a")
    capped = run_sft(tiny_model_dir, training.train, cfg_for(6, num_epochs=1, max_steps=3), tmp_path / "b")
    assert off.review == [] and off.steps == off.total_steps == cfg_for(6, num_epochs=1).total_steps(6)
    assert capped.review == [] and capped.steps == 3  # max_steps caps the review too


def test_the_review_takes_at_most_its_share_of_the_steps(tiny_model_dir, tmp_path):
    training = build_training_set(facts(16), SYSTEM, passes=1)
    cfg = cfg_for(16, num_epochs=1, per_device_batch_size=2, review_passes=4, review_max_share=0.25)
    result = run_sft(tiny_model_dir, training.train, cfg, tmp_path / "out")
    scheduled = cfg.total_steps(16)  # 8 steps: the review may add 2, though 16 x 4 copies of what it missed want more
    assert result.review and result.review[0]["missed"] > 1
    assert sum(r["steps"] for r in result.review) == 2 and result.steps == scheduled + 2


@pytest.mark.parametrize("field,value", [("review_rounds", -1), ("review_passes", 0), ("review_max_share", 1.5),
                                         ("review_lr_scale", 0)])
def test_bad_review_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_packed_run_packs_its_review_rows_too(tiny_model_dir, tmp_path):
    """Packed plans (the GPU default) train the review's rows packed, through the same collator."""
    training = build_training_set(facts(8), SYSTEM, passes=2)
    cfg = cfg_for(16, num_epochs=1, per_device_batch_size=2, review_passes=3, review_max_share=1.0, packing="on")
    result = run_sft(tiny_model_dir, training.train, cfg, tmp_path / "out")
    assert result.plan["packing"] and result.review and result.review[0]["steps"] > 0
    assert result.steps == cfg.total_steps(16) + sum(r["steps"] for r in result.review)


def test_a_round_carries_the_optimizers_moments_on_at_its_own_peak(tiny_model_dir, tmp_path):
    """A fresh Adam would move every weight by the full learning rate at once; the round continues the run's."""
    from trainer.review import run_review

    training = build_training_set(facts(8), SYSTEM, passes=1)
    cfg = cfg_for(8, num_epochs=1, per_device_batch_size=2, review_rounds=1, review_lr_scale=0.5)
    prepared = prepare_trainer(tiny_model_dir, training.train, cfg, tmp_path / "w")
    prepared.trainer.train()
    torch_optimizer = prepared.trainer.optimizer.optimizer
    before = {id(p): int(s["step"]) for p, s in torch_optimizer.state.items()}
    rounds = run_review(prepared, training.train, cfg, 3, on_round_start=lambda steps: None, cancelled=lambda: False)
    assert rounds and rounds[0].steps == 3
    after = prepared.trainer.optimizer.optimizer
    assert after is torch_optimizer  # the same optimizer, wrapped once again by the Trainer
    assert all(int(after.state[p]["step"]) == before[id(p)] + 3 for p in after.state if id(p) in before)
    assert all(g["initial_lr"] == cfg.learning_rate * 0.5 for g in after.param_groups)
