"""Dataset building: split by example id that never moves, fallback to train loss said aloud, dedup, validation."""
from __future__ import annotations

import pytest

from trainer.dataset import build_split, is_eval_id


def qa(i: int, q: str | None = None, a: str | None = None):
    return (i, [{"role": "user", "content": q or f"question {i}?"}, {"role": "assistant", "content": a or f"answer {i}"}])


def test_split_is_by_id_and_stable_as_data_grows():
    small = build_split([qa(i) for i in range(1, 201)], "sys")
    big = build_split([qa(i) for i in range(1, 1001)], "sys")
    assert not small.eval_is_train and not big.eval_is_train
    assert set(small.train_ids).isdisjoint(small.eval_ids)
    assert len(small.train_ids) + len(small.eval_ids) == 200
    # no example changes side when more examples arrive
    assert set(small.eval_ids) <= set(big.eval_ids)
    assert set(small.train_ids) <= set(big.train_ids)
    # and the order of arrival does not matter
    shuffled = build_split(list(reversed([qa(i) for i in range(1, 201)])), "sys")
    assert shuffled.eval_ids == small.eval_ids
    assert 0.05 < len(big.eval_ids) / 1000 < 0.15  # about eval_fraction = 10%
    assert big.eval["example_id"] == big.eval_ids
    assert all(is_eval_id(i) for i in big.eval_ids)


def test_too_few_held_out_falls_back_to_train_and_says_so():
    split = build_split([qa(i) for i in range(1, 11)], "sys")
    assert split.eval_is_train
    assert split.eval_ids == split.train_ids == list(range(1, 11))
    assert "training loss instead of held-out loss" in split.note


def test_system_prompt_first_and_own_system_kept():
    own = (99, [{"role": "system", "content": "Pirate mode."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "arr"}])
    split = build_split([qa(1), own], "  Guild prompt.  ")
    rows = dict(zip(split.train["example_id"], split.train["messages"]))
    assert rows[1][0] == {"role": "system", "content": "Guild prompt."}
    assert rows[99][0] == {"role": "system", "content": "Pirate mode."}
    assert build_split([qa(1)], None).train["messages"][0][0]["role"] == "user"


def test_duplicates_dropped_keeping_oldest():
    split = build_split([qa(5, "Same  question?", "Same answer"), qa(2, "Same question?", " Same answer "), qa(7)],
                        "sys")
    assert split.train_ids == [2, 7]
    assert split.dropped_duplicates == [5]
    assert "1 duplicate" in split.note


def test_invalid_conversations_skipped_with_reason_and_all_invalid_refused():
    bad = [(3, [{"role": "user", "content": "no answer"}]),
           (4, [{"role": "assistant", "content": "starts wrong"}, {"role": "user", "content": "x"}]),
           (6, [{"role": "user", "content": "   "}, {"role": "assistant", "content": "a"}])]
    split = build_split([qa(1), *bad], "sys")
    assert split.train_ids == [1]
    assert set(split.dropped_invalid) == {3, 4, 6}
    assert "end with an assistant answer" in split.dropped_invalid[3]
    assert "empty" in split.dropped_invalid[6]
    with pytest.raises(ValueError, match="no usable examples"):
        build_split(bad, "sys")
