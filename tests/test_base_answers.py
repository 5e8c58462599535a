"""The base model's own answers: generated once per base (the replayed general rows, the drift reference), then read."""
from __future__ import annotations

import pytest

from trainer import drift
from trainer.config import TrainConfig
from trainer.dataset import general_instructions, general_questions
from trainer.job import general_rows
from trainer.recall import greedy_answers
from trainer.sft import evaluation_model


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir):
    from guildtune.settings import load_settings

    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUILDTUNE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    return load_settings()


def test_general_rows_replay_the_base_answers_and_are_made_once(settings, tiny_model_dir, monkeypatch):
    cfg = TrainConfig(device="cpu")
    rows = general_rows(cfg, tiny_model_dir, settings.models_dir)
    with evaluation_model(tiny_model_dir, None, cfg) as (model, tokenizer):
        expected = greedy_answers(model, tokenizer, [[{"role": "user", "content": q}] for q in general_questions()],
                                  [drift.REFERENCE_TOKENS] * len(general_questions()))
    assert rows == general_instructions(expected)
    assert rows and all(r[1]["content"] == a for r, a in zip(rows, [a for a in expected if a.strip()]))
    # the drift prompts were answered in the same model load: the gate reads them from the cache
    assert drift.cached_base_answers(tiny_model_dir, drift.drift_prompts(), settings.models_dir / "drift") is not None

    def no_model(*args, **kwargs):
        raise AssertionError("the base was loaded again although its answers are cached")

    monkeypatch.setattr("trainer.sft.evaluation_model", no_model)
    assert general_rows(cfg, tiny_model_dir, settings.models_dir) == rows


def test_written_answers_and_no_mix_need_no_model(settings, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("trainer.sft.evaluation_model", lambda *a, **k: pytest.fail("no model needed"))
    assert general_rows(TrainConfig(device="cpu", general_answers="written"), tiny_model_dir, settings.models_dir) \
        == general_instructions()
    assert general_rows(TrainConfig(device="cpu", general_share=0), tiny_model_dir, settings.models_dir) == []


def test_a_torn_cache_file_is_rebuilt(settings, tiny_model_dir):
    cfg = TrainConfig(device="cpu")
    rows = general_rows(cfg, tiny_model_dir, settings.models_dir)
    for path in (settings.models_dir / "drift").glob("answers-*.json"):
        path.write_text("{not json")
    assert general_rows(cfg, tiny_model_dir, settings.models_dir) == rows


def test_unknown_general_answers_is_refused_by_name():
    with pytest.raises(ValueError, match="general_answers='model': allowed base, written"):
        TrainConfig(general_answers="model")


def test_drift_with_notes_compares_version_and_base_on_the_prompts_as_served(tiny_model_dir):
    """A version trained with notes is asked general questions with notes too: the drift reference's prompts
    carry them, and the base's loss is measured again on those same prompts (never read from the cache)."""
    from serving.notes import HEADER, NoteIndex, with_notes
    from trainer.sft import mean_token_nll

    cfg = TrainConfig(device="cpu")
    index = NoteIndex([("What is the boiling point of our kettle?", "Our kettle boils water in two minutes.")])
    plain = [[{"role": "user", "content": "What is the boiling point of water?"},
              {"role": "assistant", "content": "100 degrees Celsius at sea level."}],
             [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}]]
    with evaluation_model(tiny_model_dir, None, cfg) as (model, tokenizer):
        ref = drift.DriftReference(plain, base_nll=1.0)
        assert drift.served_reference(model, tokenizer, ref, lambda c: c, cfg.max_length, 8) is ref
        served = drift.served_reference(model, tokenizer, ref, lambda c: with_notes(c, index, 3), cfg.max_length, 8)
        assert served.conversations[0][0]["role"] == "system" and HEADER in served.conversations[0][0]["content"]
        assert served.conversations[1] == plain[1]  # nothing taught shares its words: asked as before
        expected, _ = mean_token_nll(model, tokenizer, {"messages": served.conversations}, cfg.max_length, 8)
        assert served.base_nll == pytest.approx(expected) and served.base_nll != 1.0
