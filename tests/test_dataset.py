"""Dataset building: every approved example trained on, passes with paraphrases, the general mix, dedup, validation."""
from __future__ import annotations

import pytest

from trainer.dataset import GENERAL_ROW_ID, build_training_set, copies_of, general_instructions
from trainer.paraphrase import PROBE_FORMS, TRAINING_FORMS, probe_variants, training_variants


def qa(i: int, q: str | None = None, a: str | None = None):
    return (i, [{"role": "user", "content": q or f"When does raid {i} start?"},
                {"role": "assistant", "content": a or f"answer {i}"}])


def test_no_approved_example_is_left_out_of_training():
    for n in (2, 7, 30, 41, 200, 1000):
        training = build_training_set([qa(i) for i in range(1, n + 1)], "sys", passes=3, paraphrase_share=0.5)
        assert training.example_ids == list(range(1, n + 1))
        assert set(training.train["example_id"]) == set(range(1, n + 1))
        # every example appears `passes` times: as taught at least once, in other words the rest
        per_example = {}
        for example_id, kind in zip(training.train["example_id"], training.train["kind"]):
            per_example.setdefault(example_id, []).append(kind)
        assert all(sorted(kinds) == ["paraphrase", "taught", "taught"] for kinds in per_example.values())


def test_paraphrased_copies_keep_the_answer_and_ask_differently():
    turns = qa(1, "When is the weekly board-game night?", "Every Thursday at 7 pm in #tabletop.")[1]
    copies = copies_of(turns, 6, 0.5)
    assert [kind for _, kind in copies].count("paraphrase") == 3
    questions = {c[-2]["content"] for c, kind in copies if kind == "paraphrase"}
    assert len(questions) == 3 and "When is the weekly board-game night?" not in questions
    assert all(c[-1] == turns[-1] for c, _ in copies)
    assert copies_of(turns, 1, 0.5) == [(turns, "taught")]  # one pass: as taught


def test_training_and_probe_phrasings_never_meet():
    for q in ("When is the weekly board-game night?", "who runs the book club", "What's the dues amount?",
              "Where do we meet on Saturdays?", "x"):
        train = set(training_variants(q, len(TRAINING_FORMS), "k"))
        probe = set(probe_variants(q, len(PROBE_FORMS), "k"))
        assert train and probe and not train & probe and q not in train | probe


def test_paraphrasing_is_linear_in_the_question_length():
    import time

    q = "word " * 200_000 + "?"
    t0 = time.perf_counter()
    assert len(training_variants(q, 8, "k")) >= 6 and probe_variants(q, 4, "k")
    assert time.perf_counter() - t0 < 5  # 1 MB question; a backtracking rule would take hours


def test_general_mix_is_a_share_of_the_rows_with_the_guild_prompt():
    general = general_instructions()
    assert len(general) >= 40
    training = build_training_set([qa(i) for i in range(1, 31)], "Guild prompt.", passes=4, paraphrase_share=0.5,
                                  general=general, general_share=0.2)
    kinds = training.train["kind"]
    assert kinds.count("general") == training.n_general == round(0.2 * 120 / 0.8)
    rows = [m for m, k in zip(training.train["messages"], kinds) if k == "general"]
    assert all(m[0] == {"role": "system", "content": "Guild prompt."} for m in rows)
    assert all(i == GENERAL_ROW_ID for i, k in zip(training.train["example_id"], kinds) if k == "general")
    assert build_training_set([qa(1), qa(2)], None, general=general, general_share=0.0).n_general == 0


def test_system_prompt_first_and_own_system_kept():
    own = (99, [{"role": "system", "content": "Pirate mode."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "arr"}])
    training = build_training_set([qa(1), own], "  Guild prompt.  ")
    rows = dict(zip(training.train["example_id"], training.train["messages"]))
    assert rows[1][0] == {"role": "system", "content": "Guild prompt."}
    assert rows[99][0] == {"role": "system", "content": "Pirate mode."}
    assert build_training_set([qa(1)], None).train["messages"][0][0]["role"] == "user"


def test_duplicates_dropped_keeping_oldest_with_storage_rule():
    # case, spacing and Unicode form do not make a new example (storage's content_hash)
    training = build_training_set([qa(5, "SAME  question?", "Same answer"), qa(2, "Same question?", " Same answer "),
                                   qa(8, "Ｓame question?", "same answer"), qa(7)], "sys")
    assert training.example_ids == [2, 7]
    assert training.dropped_duplicates == [5, 8]
    assert "2 duplicate" in training.note


def test_invalid_conversations_skipped_with_reason_and_all_invalid_refused():
    bad = [(3, [{"role": "user", "content": "no answer"}]),
           (4, [{"role": "assistant", "content": "starts wrong"}, {"role": "user", "content": "x"}]),
           (6, [{"role": "user", "content": "   "}, {"role": "assistant", "content": "a"}])]
    training = build_training_set([qa(1), *bad], "sys")
    assert training.example_ids == [1]
    assert set(training.dropped_invalid) == {3, 4, 6}
    assert "3 unusable" in training.note
    with pytest.raises(ValueError, match="no usable examples"):
        build_training_set(bad, "sys")


def test_an_example_whose_answer_was_voted_down_is_neither_trained_nor_probed():
    from trainer.recall import example_key

    taught = qa(2, "How long can I borrow the laser cutter?", "Keep it as long as you like.")
    voted_down = frozenset({example_key(taught[1])})
    training = build_training_set([qa(1), taught, qa(3)], "sys", passes=2, superseded=voted_down)
    assert training.example_ids == [1, 3] and 2 not in set(training.train["example_id"])
    assert training.note == "1 example(s) left out: their answer was voted down"
    assert training.dropped_duplicates == []
    # the same question taught with another answer is kept: only the voted-down answer is superseded
    other = qa(4, "How long can I borrow the laser cutter?", "Two weeks, renewable once.")
    assert build_training_set([other], "sys", superseded=voted_down).example_ids == [4]


def test_the_passes_follow_the_examples_trained_not_those_left_out():
    from types import SimpleNamespace

    from trainer.config import TrainConfig
    from trainer.job import training_rows
    examples = [SimpleNamespace(id=i, messages=qa(i)[1]) for i in range(1, 31)]
    # half of them voted down: the approved disliked answer is the taught one
    voted = [SimpleNamespace(id=100 + i, messages=qa(i)[1], label="undesirable") for i in range(1, 16)]
    cfg = TrainConfig.for_dataset(30, general_share=0, paraphrase_share=0)
    training = training_rows(examples, SimpleNamespace(system_prompt=None), cfg, [], voted)
    assert training.example_ids == list(range(16, 31))
    assert len(training.train) == 15 * cfg.epochs(15) and cfg.epochs(15) > cfg.epochs(30)


def test_a_liked_answer_is_taught_and_a_disliked_one_supersedes_what_it_matches():
    """The outdated import the community corrects by voting: 👎 on the taught answer, 👍 on the right one."""
    from types import SimpleNamespace

    from trainer.config import TrainConfig
    from trainer.job import training_rows

    wrong, right = qa(1, "Where is the soldering kit?", "In the attic."), qa(1, "Where is the soldering kit?",
                                                                            "In the red cabinet by the door.")
    examples = [SimpleNamespace(id=1, messages=wrong[1]), SimpleNamespace(id=2, messages=qa(2)[1])]
    voted = [SimpleNamespace(id=10, messages=wrong[1], label="undesirable"),
             SimpleNamespace(id=11, messages=right[1], label="desirable")]
    cfg = TrainConfig.for_dataset(2, general_share=0, paraphrase_share=0)
    training = training_rows(examples, SimpleNamespace(system_prompt="sys"), cfg, [], voted)
    assert training.example_ids == [2, 11]
    answers = {m[-1]["content"] for m in training.train["messages"]}
    assert answers == {"answer 2", "In the red cabinet by the door."}
    assert "1 liked answer(s) from votes taught" in training.note and "voted down" in training.note
    # without votes nothing changes
    assert training_rows(examples, SimpleNamespace(system_prompt="sys"), cfg, []).example_ids == [1, 2]


def test_some_training_phrasings_keep_only_part_of_the_question_or_add_words_of_their_own():
    q = "When is the weekly board-game night?"
    variants = training_variants(q, len(TRAINING_FORMS), "k")
    assert "when weekly board-game?" in variants and "when board-game night?" in variants
    assert any(v.endswith(": when is the weekly board-game night?") and len(v) > len(q) + 10 for v in variants)
