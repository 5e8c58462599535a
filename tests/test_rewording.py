"""The base model's rewordings of taught questions: which continuations are kept, and how a run uses them."""
from __future__ import annotations

import time

from trainer.config import TrainConfig
from trainer.dataset import build_training_set, copies_of
from trainer import rewording
from trainer.rewording import Rewordings, accepted, base_rewordings, prompt_for, question_hash, reword

Q = "Who founded the Copperfield Makers?"


def test_a_rewording_that_still_asks_the_question_is_kept():
    assert accepted(Q, " Who is the founder of the Copperfield Makers?\nQuestion: next") == \
        "Who is the founder of the Copperfield Makers?"
    assert accepted(Q, ' "who started the Copperfield Makers?"') == "who started the Copperfield Makers?"


def test_copies_changed_questions_and_non_questions_are_dropped():
    assert accepted(Q, " Who founded the Copperfield  makers?") is None  # the same question
    assert accepted(Q, " What is the best soldering iron?") is None  # another question
    assert accepted(Q, " The Copperfield Makers were founded in 2019.") is None  # not a question
    assert accepted(Q, " Who founded the Copperfield Makers and " + "why " * 30 + "?") is None  # wandered off
    assert accepted(Q, "") is None


def test_the_check_is_linear_in_the_text():
    t0 = time.perf_counter()
    assert accepted(Q, "founded " * 200_000 + "?") is None
    assert accepted("founded " * 100_000 + "?", "founded " * 100_001 + "?") is not None
    assert time.perf_counter() - t0 < 5


def test_the_prompt_ends_with_the_question_on_one_line():
    assert prompt_for("When is\n\nraid   night?").endswith("Question: When is raid night?\nIn other words:")


def test_reworded_copies_take_turns_with_templated_ones():
    turns = [{"role": "user", "content": Q}, {"role": "assistant", "content": "Oriel Vashti."}]
    copies = copies_of(turns, 6, 0.5, ["Who started the Copperfield Makers?", "Who set up the Copperfield Makers?"])
    kinds = [kind for _, kind in copies]
    assert kinds.count("taught") == 3 and kinds.count("reworded") == 2 and kinds.count("paraphrase") == 1
    asked = [c[-2]["content"] for c, kind in copies if kind == "reworded"]
    assert asked == ["Who started the Copperfield Makers?", "Who set up the Copperfield Makers?"]
    assert all(c[-1] == turns[-1] for c, _ in copies)


def test_a_run_asks_for_rewordings_of_the_kept_questions_only():
    asked: list[list[str]] = []

    def fake_reword(items):
        asked.append([q for _, q in items])
        return {i: [q.replace("When", "At what time")] for i, q in items}

    examples = [(i, [{"role": "user", "content": f"When is raid {i}?"}, {"role": "assistant", "content": f"At {i}."}])
                for i in range(1, 4)]
    examples.append((9, examples[0][1]))  # a duplicate: not asked twice
    training = build_training_set(examples, "sys", passes=4, paraphrase_share=0.5, reword=fake_reword)
    assert asked == [["When is raid 1?", "When is raid 2?", "When is raid 3?"]]
    assert training.n_reworded == 3 and training.n_paraphrased == 6
    reworded = [m[-2]["content"] for m, k in zip(training.train["messages"], training.train["kind"]) if k == "reworded"]
    assert sorted(reworded) == ["At what time is raid 1?", "At what time is raid 2?", "At what time is raid 3?"]
    # no paraphrased copies wanted: the base is not asked
    build_training_set(examples, "sys", passes=4, paraphrase_share=0.0, reword=fake_reword)
    assert len(asked) == 1


def test_the_base_model_is_asked_and_only_accepted_rewordings_come_back(tiny_model_dir):
    from trainer.sft import evaluation_model

    cfg = TrainConfig(device="cpu", base_rewordings=2)
    questions = ["When is the weekly raid night?", "Who runs the book club?"]
    with evaluation_model(tiny_model_dir, None, cfg) as (model, tokenizer):
        first = reword(model, tokenizer, questions, 2, seed=7)
        again = reword(model, tokenizer, questions, 2, seed=7)
    assert set(first) == set(questions) and first == again  # seeded: a run is repeatable
    for q, found in first.items():
        assert len(found) <= 2 and all(accepted(q, f) == f for f in found)
    assert base_rewordings(tiny_model_dir, TrainConfig(device="cpu", base_rewordings=0), questions) == {}


def test_kept_rewordings_are_reused_and_only_new_or_edited_questions_asked(monkeypatch):
    asked: list[list[str]] = []

    def fake_base(base_dir, cfg, questions):
        asked.append(list(questions))
        return {q: [q.replace("Who", "Which person")] for q in questions if "raid" not in q}

    monkeypatch.setattr(rewording, "base_rewordings", fake_base)
    cfg = TrainConfig(device="cpu", base_rewordings=2)
    kept = {1: (question_hash("Who runs raids?"), ["Which person runs raids?"]),
            2: (question_hash("Who ran it before the edit?"), ["stale"])}
    reword_now = Rewordings("base", cfg, kept)
    got = reword_now([(1, "Who runs raids?"), (2, "Who runs the book club?"), (3, "When is raid night?")])
    assert asked == [["Who runs the book club?", "When is raid night?"]]  # 1 was kept; 2's question changed
    assert got == {1: ["Which person runs raids?"], 2: ["Which person runs the book club?"], 3: []}
    assert reword_now.made == {2: (question_hash("Who runs the book club?"), ["Which person runs the book club?"]),
                               3: (question_hash("When is raid night?"), [])}  # none found is kept too
    # the next run, with what this one made kept: the base is not asked at all
    again = Rewordings("base", cfg, {**kept, **reword_now.made})
    assert again([(2, "Who runs the book club?"), (3, "When is raid night?")]) == {
        2: ["Which person runs the book club?"], 3: []}
    assert len(asked) == 1 and again.made == {}
    assert Rewordings("base", TrainConfig(device="cpu", base_rewordings=0), {})([(5, "Who?")]) == {}


async def test_rewordings_are_kept_per_base_and_go_with_their_example(db_url):
    from storage.db import Database

    db = await Database.open(db_url)
    try:
        ids = []
        for q in ("Who runs raids?", "When is raid night?"):
            added = await db.examples.add(7, [{"role": "user", "content": q}, {"role": "assistant", "content": "A."}],
                                          source="teach", author_id=55, status="approved")
            ids.append(added.example.id)
        await db.examples.save_rewordings(7, "base-a", {ids[0]: ("h0", ["Which person runs raids?"]),
                                                        ids[1]: ("h1", []), 999_999: ("hx", ["no such example"])})
        assert await db.examples.rewordings(7, "base-a") == {ids[0]: ("h0", ["Which person runs raids?"]),
                                                             ids[1]: ("h1", [])}
        assert await db.examples.rewordings(7, "base-b") == {} and await db.examples.rewordings(8, "base-a") == {}
        await db.examples.save_rewordings(7, "base-a", {ids[0]: ("h2", ["Who leads raids?"])})  # replaced
        assert (await db.examples.rewordings(7, "base-a"))[ids[0]] == ("h2", ["Who leads raids?"])
        await db.examples.forget_author(7, 55)  # /forget: the member's examples and their rewordings
        assert await db.examples.rewordings(7, "base-a") == {}
        rows = await db.fetchall("SELECT rewordings FROM example_rewordings", ())
        assert rows == []
    finally:
        await db.close()


async def test_a_guild_that_turns_rewordings_on_keeps_them_and_a_retrain_reuses_them(tiny_model_dir, tmp_path,
                                                                                    monkeypatch, capfd):
    """The real job (child process, tiny model): `base_rewordings` set in GUILDTUNE_TRAIN_CONFIG; the first run
    asks the base about every approved question and keeps what it found; the next run trains on the kept
    rewordings without asking the base again."""
    import json

    from guildtune.runtime import daemon_options
    from guildtune.settings import load_settings
    from serving.local_server import LocalServer
    from storage.db import Database
    from trainer.daemon import TrainerDaemon

    guild = 77
    for name, value in {"GUILDTUNE_DATA_DIR": str(tmp_path / "data"), "GUILDTUNE_BASE_MODEL": str(tiny_model_dir),
                        "GUILDTUNE_DEVICE": "cpu", "GUILDTUNE_TRAIN_MAX_STEPS": "4", "GUILDTUNE_GATE_MAX_DRIFT": "100",
                        "GUILDTUNE_TRAIN_CONFIG": json.dumps({"base_rewordings": 2})}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    settings = load_settings()
    db = await Database.open(settings.db_path)
    server = LocalServer(str(tiny_model_dir), device="cpu")
    try:
        ids = []
        for i in range(4):
            turns = [{"role": "user", "content": f"When is raid night {i}?"}, {"role": "assistant", "content": f"At {i}."}]
            ids.append((await db.examples.add(guild, turns, source="teach", author_id=5, status="approved")).example.id)
        daemon = TrainerDaemon(db, daemon_options(settings), server)

        async def retrain():
            run, _, _ = await db.runs.enqueue(guild, trigger="retrain")
            outcome = await daemon.process(await db.runs.claim(guild, run.id))
            assert outcome.published, (outcome.run.error, outcome.run.gate_reason)
            return outcome.run.metrics

        await retrain()
        assert "the base reworded" in capfd.readouterr().err
        rows = await db.fetchall("SELECT example_id, base, question_hash FROM example_rewordings", ())
        assert sorted(r["example_id"] for r in rows) == ids  # every question asked once, kept even if none passed
        (key,) = {r["base"] for r in rows}
        assert key.endswith(f":2:{rewording.PROMPT_VERSION}")
        # what the base wrote for the first question, as a moderator would find it kept
        await db.examples.save_rewordings(guild, key, {ids[0]: (question_hash("When is raid night 0?"),
                                                                 ["At what time is raid night 0?"])})
        metrics = await retrain()
        assert "the base reworded" not in capfd.readouterr().err  # nothing new: the base was not asked
        assert metrics["n_reworded"] >= 1
    finally:
        await server.close()
        await db.close()
