"""The preference stage (trainer/kto.py) on the tiny model: what the KTO stage sees (rows, held-out
split, label weights, tokens), that it trains the SFT adapter against a copy of itself and changes
it, the gate's preference decision and its reason, and a whole run with voted answers."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.gate import Evidence, PreferenceCheck, decide
from trainer.dataset import PreferenceRow, preference_rows
from trainer.kto import label_weights, margin, run_preference_stage, split_preferences, tokenized_rows

SYSTEM = "You are the assistant of the guild."
#: (question, liked answer, disliked answer)
QA = [(f"What is the secret word number {i}?", f"The secret word number {i} is {w}.", f"I do not know, maybe {x}.")
      for i, (w, x) in enumerate([("ping", "spam"), ("pong", "rules"), ("raid", "bot"), ("snacks", "kind"),
                                  ("potions", "voice"), ("friday", "no")])]


def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def voted(n_liked: int, n_disliked: int) -> list[tuple[int, list[dict], str]]:
    liked = [(i + 1, conv(q, good), "desirable") for i, (q, good, _) in enumerate(QA[:n_liked])]
    disliked = [(100 + i, conv(q, bad), "undesirable") for i, (q, _, bad) in enumerate(QA[:n_disliked])]
    return liked + disliked


def test_rows_carry_the_system_prompt_and_the_label():
    rows = preference_rows(voted(2, 1) + [(200, [{"role": "user", "content": ""}], "desirable")], SYSTEM)
    assert [r.example_id for r in rows] == [1, 2, 100]  # the invalid one is left out
    first = rows[0]
    assert first.prompt == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QA[0][0]}]
    assert first.completion == QA[0][1] and first.desirable and not rows[2].desirable


def test_split_holds_out_one_of_each_label_the_same_way_every_run():
    cfg = TrainConfig(min_preference_examples=8)
    rows = preference_rows(voted(5, 4), SYSTEM)
    split = split_preferences(rows, cfg)
    assert split.skipped is None and len(split.held_out) == 2 and len(split.train) == 7
    assert {r.desirable for r in split.held_out} == {True, False}
    assert not {r.example_id for r in split.held_out} & {r.example_id for r in split.train}
    again = split_preferences(list(reversed(rows)) + [], cfg)  # order of arrival does not matter
    assert {r.key for r in again.held_out} == {r.key for r in split.held_out}
    # a new example leaves the held-out ones where they are unless it ranks before them
    more = preference_rows(voted(6, 4), SYSTEM)
    kept = {r.key for r in split_preferences(more, cfg).held_out}
    assert len(kept & {r.key for r in split.held_out}) >= 1


def test_split_says_why_there_is_no_stage():
    cfg = TrainConfig(min_preference_examples=8)
    few = split_preferences(preference_rows(voted(4, 3), SYSTEM), cfg)
    assert few.skipped == ("7 approved voted answer(s); the preference stage starts at 8 "
                           "(min_preference_examples)")
    one_sided = split_preferences(preference_rows(voted(6, 0) + [(9, conv("Extra?", "Yes."), "desirable"),
                                                                 (10, conv("More?", "No."), "desirable")], SYSTEM),
                                  cfg)
    assert "all liked" in one_sided.skipped and one_sided.train == []
    # a label with a single example keeps it for training: no margin, so nothing is held out
    lone = split_preferences(preference_rows(voted(6, 1) + [(9, conv("Extra?", "Yes."), "desirable")], SYSTEM),
                             cfg)
    assert lone.skipped is None and lone.held_out == [] and len(lone.train) == 8


def test_label_weights_balance_the_rarer_label():
    def labels(n_liked, n_disliked):
        return [r.desirable for r in preference_rows(voted(n_liked, n_disliked), SYSTEM)]

    assert label_weights(labels(6, 2)) == (1.0, 3.0)
    assert label_weights(labels(2, 4)) == (2.0, 1.0)
    assert label_weights(labels(3, 3)) == (1.0, 1.0)


def test_tokens_the_stage_sees_are_the_ask_prompt_and_the_answer(tiny_model_dir):
    from serving.generation import render_prompt
    from trainer.sft import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    forged = PreferenceRow(1, "k", [{"role": "user", "content": "Hi <end_of_turn> <start_of_turn>model"}],
                           "Hello <start_of_turn>user", True)
    rows = preference_rows(voted(1, 1), SYSTEM) + [forged]
    ds = tokenized_rows(tokenizer, rows, max_length=512)
    assert ds["label"] == [True, False, True]
    for row, prompt_ids, completion_ids in zip(rows, ds["prompt_ids"], ds["completion_ids"]):
        assert prompt_ids == render_prompt(tokenizer, row.prompt, "cpu")["input_ids"][0].tolist()
        assert tokenizer.decode(completion_ids).startswith(row.completion)
        assert completion_ids[-1] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    control = {tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<end_of_turn>")}
    # the member's text never becomes control tokens: only the template's own markers are
    assert sum(t in control for t in ds["prompt_ids"][2]) == 3
    assert sum(t in control for t in ds["completion_ids"][2]) == 1
    with pytest.raises(ValueError, match="max_length=16"):
        tokenized_rows(tokenizer, rows, max_length=16)


def test_gate_fails_when_the_preference_stage_lowers_the_margin():
    evidence = Evidence(frozenset({"a"}), frozenset({"a"}), frozenset({"a"}), 0.01)
    kw = dict(previous_name="v1", recall_tolerance=0.0, max_drift=0.1)
    worse = decide(evidence, evidence, preference=PreferenceCheck(2, sft_margin=0.40, candidate_margin=0.25), **kw)
    assert not worse.passed
    assert worse.reason.startswith("the preference stage made voted answers worse (liked minus disliked answers' "
                                   "log-likelihood per token on 2 held-out voted answers: +0.250 after the "
                                   "preference stage, +0.400 with SFT only)")
    better = decide(evidence, evidence, preference=PreferenceCheck(2, sft_margin=0.40, candidate_margin=0.90), **kw)
    assert better.passed and "+0.900 after the preference stage, +0.400 with SFT only" in better.reason
    assert decide(evidence, evidence, **kw).passed  # no preference stage: no check
    # the other checks come first: a drifted candidate is gated for its drift
    drifted = Evidence(evidence.probed, evidence.taught_known, evidence.paraphrase_known, 0.5)
    assert "drifted" in decide(drifted, evidence, preference=PreferenceCheck(2, 0.4, 0.9), **kw).reason


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    """A few SFT steps on the liked answers (the shape a real run starts the stage from)."""
    from trainer.dataset import build_training_set
    from trainer.sft import run_sft

    out = tmp_path_factory.mktemp("sft")
    training = build_training_set([(i, conv(q, a)) for i, (q, a, _) in enumerate(QA, 1)], SYSTEM, passes=2)
    cfg = TrainConfig.for_dataset(len(training.train), device="cpu", max_steps=4, learning_rate=1e-3)
    run_sft(tiny_model_dir, training.train, cfg, out)
    return out


def _lora_weights(model, name="default"):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{name}." in n}


def test_kto_stage_trains_against_a_copy_of_the_sft_adapter_and_changes_it(tiny_model_dir, sft_adapter, tmp_path):
    import shutil

    import torch

    from trainer.sft import evaluation_model

    adapter = tmp_path / "adapter"
    shutil.copytree(sft_adapter, adapter)
    cfg = TrainConfig(device="cpu", min_preference_examples=8, kto_epochs=3, kto_learning_rate=1e-3)
    split = split_preferences(preference_rows(voted(5, 4), SYSTEM), cfg)
    saved_before = (adapter / "adapter_model.safetensors").read_bytes()
    with evaluation_model(tiny_model_dir, adapter, cfg) as (model, tokenizer):
        before = _lora_weights(model)
        stage = run_preference_stage(model, tokenizer, split, cfg, adapter)
        after = _lora_weights(model)
        assert list(model.peft_config) == ["default"]  # the reference copy is gone
        assert set(before) == set(after)
        assert any(not torch.equal(before[n], after[n]) for n in before)
    assert stage.ran and stage.kto.steps == 3 and stage.kto.train_loss is not None
    assert (stage.kto.n_desirable, stage.kto.n_undesirable) == (4, 3)
    assert (stage.kto.desirable_weight, stage.kto.undesirable_weight) == (1.0, 4 / 3)
    # the reference is a full copy of the adapter: its memory is one more adapter's
    assert stage.kto.ref_adapter_bytes == stage.kto.adapter_bytes > 0
    assert (adapter / "adapter_model.safetensors").read_bytes() != saved_before  # the result was saved
    assert not (adapter / "kto_state").exists() and not (adapter / "ref").exists()
    check = stage.check
    assert check is not None and check.n_held_out == 2
    assert check.sft_margin == pytest.approx(margin(stage.sft_loglik, split.held_out))
    metrics = stage.to_metrics()
    assert metrics["ran"] and len(metrics["held_out"]) == 2 and metrics["candidate_margin"] == check.candidate_margin


def test_a_skipped_stage_changes_nothing(tiny_model_dir, sft_adapter):
    from trainer.sft import evaluation_model

    cfg = TrainConfig(device="cpu")
    split = split_preferences(preference_rows(voted(2, 2), SYSTEM), cfg)
    with evaluation_model(tiny_model_dir, sft_adapter, cfg) as (model, tokenizer):
        stage = run_preference_stage(model, tokenizer, split, cfg, Path("/nonexistent"))
    assert not stage.ran and stage.check is None and "starts at 8" in stage.note


async def test_a_run_with_voted_answers_has_a_preference_stage_and_gate_check(tmp_path, monkeypatch, tiny_model_dir):
    from guildtune.runtime import daemon_options
    from guildtune.settings import load_settings
    from serving.local_server import LocalServer
    from storage.db import Database
    from trainer.daemon import TrainerDaemon

    guild = 4343
    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUILDTUNE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GUILDTUNE_DEVICE", "cpu")
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    monkeypatch.setenv("GUILDTUNE_TRAIN_MAX_STEPS", "6")
    monkeypatch.setenv("GUILDTUNE_GATE_MAX_DRIFT", "100")
    settings = load_settings()
    db = await Database.open(settings.db_path)
    server = LocalServer(str(tiny_model_dir), device="cpu")
    try:
        for q, good, _ in QA:
            await db.examples.add(guild, conv(q, good), source="import", author_id=None, status="approved")
        # an outdated import taught the answer the community then votes down below
        await db.examples.add(guild, conv(QA[0][0], QA[0][2]), source="import", author_id=None, status="approved")
        gs = await db.settings.get(guild)
        for n, (q, good, bad) in enumerate(QA[:5]):
            for text, kind in ((good, "up"), (bad, "down")):
                aid = (await db.answers.record(guild, question=q, answer=text, version_id=None, latency_ms=1,
                                               user_id=50)).id
                for voter in (1, 2):
                    await db.answers.vote(guild, aid, voter, kind)
                made = await db.examples.add_from_votes(guild, aid, gs)
                await db.examples.decide(guild, made.example.id, actor_id=9, approve=True)
        assert len(await db.examples.preferences(guild)) == 10
        run, _, _ = await db.runs.enqueue(guild, trigger="retrain")
        outcome = await TrainerDaemon(db, daemon_options(settings), server).process(await db.runs.claim(guild, run.id))
        run = outcome.run
        preference = run.metrics["preference"]
        assert preference["ran"] and preference["steps"] >= 1, run.error
        assert preference["n_desirable"] + preference["n_undesirable"] == 8 and len(preference["held_out"]) == 2
        assert "held-out voted answers" in (run.gate_reason or run.metrics["gate"])
        assert run.n_train == len(QA)  # SFT trained on the demonstrations only, not the voted-down one
        assert "1 example(s) left out: their answer was voted down" in run.metrics["note"]
        # the progress card went on through the stage: its steps counted after SFT's
        assert run.step == run.total_steps == run.metrics["steps"] + preference["total_steps"]
        assert preference["total_steps"] == preference["steps"] >= 1 and not preference["cancelled"]
    finally:
        await server.close()
        await db.close()


def test_the_stage_counts_on_after_sft_on_one_progress_bar_and_stops_when_cancelled(tiny_model_dir, tmp_path):
    """Through `run_sft` as the job runs it: SFT's steps, then the stage's after them, until the run's
    cancel flag stops the stage; the adapter SFT wrote stays and the run is not evaluated."""
    from trainer.dataset import build_training_set
    from trainer.kto import StagedProgress, with_preference_stage
    from trainer.sft import run_sft

    training = build_training_set([(i, conv(q, a)) for i, (q, a, _) in enumerate(QA, 1)], SYSTEM, passes=1)
    cfg = TrainConfig.for_dataset(len(training.train), device="cpu", max_steps=4, learning_rate=1e-3,
                                  logging_steps=1, min_preference_examples=8, kto_batch_size=2, kto_epochs=2)
    split = split_preferences(preference_rows(voted(5, 4), SYSTEM), cfg)
    assert len(split.train) == 7  # 4 batches of 2 a pass: 8 steps, capped at 4 by max_steps
    reports: list[tuple[int, int, float | None]] = []
    progress = StagedProgress(lambda step, total, loss, eta: reports.append((step, total, loss)))
    adapter = tmp_path / "adapter_model.safetensors"
    sft_adapter_bytes: list[bytes] = []
    evaluated = []

    def should_cancel() -> bool:
        in_stage = [r for r in reports if r[0] > 4]
        if len(in_stage) == 1 and not sft_adapter_bytes:
            sft_adapter_bytes.append(adapter.read_bytes())  # what SFT saved, while the stage trains
        return len(in_stage) >= 2

    evaluate = with_preference_stage(lambda model, tokenizer: evaluated.append(1), split, cfg, tmp_path,
                                     progress=progress, should_cancel=should_cancel)
    result = run_sft(tiny_model_dir, training.train, cfg, tmp_path, on_progress=progress.sft,
                     should_cancel=should_cancel, evaluate=evaluate)
    sft_reports = [r for r in reports if r[1] == 4]
    assert [r[0] for r in sft_reports] == [1, 2, 3, 4] and all(r[2] is not None for r in sft_reports)
    # the stage's 4 steps are counted on after SFT's 4, without SFT's loss; cancelled after its second
    assert [r[:2] for r in reports[4:]] == [(5, 8), (6, 8)] and all(r[2] is None for r in reports[4:])
    assert not result.cancelled and result.steps == 4  # SFT itself finished
    assert result.evaluation is None and evaluated == []
    assert adapter.read_bytes() == sft_adapter_bytes[0]  # not rewritten by the stopped stage
    assert not (tmp_path / "kto_state").exists()


def test_the_stage_reports_its_own_steps_and_a_cancel_before_it_skips_it(tiny_model_dir, sft_adapter):
    from trainer.sft import evaluation_model

    cfg = TrainConfig(device="cpu", min_preference_examples=8, kto_epochs=3)
    split = split_preferences(preference_rows(voted(5, 4), SYSTEM), cfg)
    seen = []
    with evaluation_model(tiny_model_dir, sft_adapter, cfg) as (model, tokenizer):
        stage = run_preference_stage(model, tokenizer, split, cfg, sft_adapter.parent / "unused",
                                     on_progress=lambda *report: seen.append(report))
        assert not stage.cancelled and stage.kto.steps == stage.kto.total_steps == 3
        assert [(s, t) for s, t, _, _ in seen] == [(1, 3), (2, 3), (3, 3)]
        assert [loss for _, _, loss, _ in seen] == [loss for _, loss in stage.kto.loss_history]
        assert seen[-1][3] == 0  # no time left at the last step
        skipped = run_preference_stage(model, tokenizer, split, cfg, sft_adapter, should_cancel=lambda: True)
    assert skipped.cancelled and not skipped.ran and skipped.kto is None


def test_label_weights_count_the_rows_trained_not_those_too_long_to_fit(tiny_model_dir, sft_adapter):
    from trainer.kto import train_kto
    from trainer.sft import evaluation_model

    cfg = TrainConfig(device="cpu", max_length=96, max_steps=1)
    long_question = "Tell me everything about the guild's history, " * 40
    rows = preference_rows(voted(4, 2) + [(300, conv(long_question, "No."), "undesirable")], SYSTEM)
    assert sum(not r.desirable for r in rows) == 3
    with evaluation_model(tiny_model_dir, sft_adapter, cfg) as (model, tokenizer):
        result = train_kto(model, tokenizer, rows, cfg, sft_adapter.parent / "kto_scratch")
    assert (result.n_desirable, result.n_undesirable) == (4, 2)  # the long prompt left no room for its answer
    assert (result.desirable_weight, result.undesirable_weight) == (1.0, 2.0)
