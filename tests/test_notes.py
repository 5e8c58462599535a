"""Notes: the guild's taught answers nearest a question, shown beside it in training and in serving alike
(serving/notes.py, serving.prompting.GuildNotes, trainer/dataset.py)."""
from __future__ import annotations

import time

import pytest

from serving.notes import (HEADER, MAX_POSTINGS, NOTE_WORDS, NoteIndex, terms, version_note_count,
                           with_notes)
from serving.prompting import GuildNotes
from storage.db import Database
from storage.records import GuildSettings, ModelVersion
from trainer.dataset import build_training_set

GUILD = 3
FACTS = [
    ("When is the weekly board-game night?", "Board-game night is every Wednesday evening from 7 pm."),
    ("Who founded the Copperfield Makers?", "The Copperfield Makers were founded by Oriel Vashti."),
    ("Which channel should I use to get help with 3D printing?", "Ask for 3D-printing help in #filament-woes."),
    ("What role do new members get when they join?", "Newcomers start with the Sawdust role."),
]


def conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def version(metrics: dict) -> ModelVersion:
    return ModelVersion(id=1, guild_id=GUILD, number=1, run_id=None, tag=None, adapter_path="/nowhere",
                        base_model="base", metrics=metrics, status="ready", n_examples=len(FACTS),
                        created_at=time.time())


def test_a_question_in_other_words_finds_its_taught_answer_first():
    index = NoteIndex(FACTS)
    assert index.find("who's the founder of this community?", 3)[0].question == FACTS[1][0]
    assert index.find("what day do we do board games?", 3)[0].question == FACTS[0][0]
    assert index.find("my prints keep failing, where do I post about 3d printing?", 1)[0].answer.endswith(
        "#filament-woes.")
    assert len(index.find("founder board games printing role", 2)) == 2  # at most `count`


def test_a_question_sharing_no_word_gets_no_note_and_the_messages_stay_as_they_were():
    index = NoteIndex(FACTS)
    asked = [{"role": "user", "content": "What is the capital of France?"}]
    assert index.find(asked[0]["content"], 3) == []
    assert with_notes(asked, index, 3) is asked
    assert with_notes(asked, None, 3) is asked
    asked = [{"role": "user", "content": "Who founded it?"}]
    assert with_notes(asked, index, 0) is asked
    assert NoteIndex([]).find("Who founded it?", 3) == []


def test_once_one_note_matches_well_the_next_best_are_shown_even_if_they_share_fewer_words():
    # "night" alone is a small share of the question; the first note holds most of it
    index = NoteIndex(FACTS + [("Is the workshop open at night?", "The workshop closes at 10 pm.")])
    found = index.find("which weekly night is the board-game one?", 3)
    assert [n.question for n in found] == [FACTS[0][0], "Is the workshop open at night?"]
    # the same weak match alone shows nothing: the question is not about anything taught
    assert index.find("what do owls eat at night?", 3) == []


def test_notes_join_the_guilds_system_prompt_or_make_one():
    index = NoteIndex(FACTS)
    asked = [{"role": "system", "content": "You are the makers' bot."},
             {"role": "user", "content": "Who started the Copperfield Makers?"}]
    shown = with_notes(asked, index, 2)
    assert shown[0]["role"] == "system" and shown[0]["content"].startswith("You are the makers' bot.\n\n" + HEADER)
    assert f"Q: {FACTS[1][0]}\nA: {FACTS[1][1]}" in shown[0]["content"]
    assert shown[1:] == asked[1:]  # the member's question is untouched
    alone = with_notes(asked[1:], index, 2)
    assert alone[0]["role"] == "system" and alone[0]["content"].startswith(HEADER) and alone[1] == asked[1]


def test_a_long_answer_is_shown_by_its_start_and_marked_as_shortened():
    long_answer = " ".join(f"word{i}" for i in range(NOTE_WORDS + 30))
    note = NoteIndex([("How does the long rule go?", long_answer)]).find("the long rule?", 1)[0]
    assert note.answer.endswith(" …") and len(note.answer.split()) == NOTE_WORDS + 1


def test_text_written_without_spaces_is_matched_by_character_pairs():
    assert terms("周末活动") == ["周末", "末活", "活动"]
    index = NoteIndex([("周末的桌游活动在哪里？", "周末的桌游活动在三楼的会议室。"), ("谁创建了这个服务器？", "服务器是小王创建的。")])
    assert index.find("桌游活动在什么地方", 1)[0].question == "周末的桌游活动在哪里？"


def test_a_very_long_question_is_searched_in_one_pass():
    """Linear in the question: 200k characters of one repeated word and of distinct words both return."""
    index = NoteIndex(FACTS)
    assert index.find("founded " * 25_000, 3)[0].question == FACTS[1][0]
    assert len(index.find(" ".join(f"w{i}" for i in range(30_000)) + " founded", 3)) <= 3


def test_a_word_in_most_of_a_large_guilds_examples_is_not_searched_and_a_rare_one_still_is():
    pairs = [(f"What does guild rule {i} say?", f"Guild rule {i} says be kind, number {i}.") for i in range(MAX_POSTINGS + 1)]
    index = NoteIndex([*pairs, ("Where does the zeppelin club meet?", "The zeppelin club meets in the guild hall.")])
    assert index.find("guild", 3) == []  # in every example: no evidence, and not walked through
    assert index.find("guild zeppelin", 3)[0].question == "Where does the zeppelin club meet?"


def test_a_version_is_served_with_notes_only_if_it_was_trained_with_them():
    assert version_note_count(version({"notes": 3})) == 3
    assert version_note_count(version({})) == 0  # trained before notes existed
    assert version_note_count(version({"notes": 0})) == 0
    assert version_note_count(None) == 0  # the base model


def test_every_training_row_carries_the_notes_its_question_will_be_served_with():
    examples = [(i + 1, conv(q, a)) for i, (q, a) in enumerate(FACTS)]
    general = [conv("Which board game is the best for beginners?", "Ticket to Ride is a good first game.")]
    training = build_training_set(examples, "You are the makers' bot.", passes=4, paraphrase_share=0.5,
                                  general=general, general_share=0.2, notes=2)
    rows = training.train.to_list()
    taught = [r for r in rows if r["kind"] == "taught"]
    assert taught and all(HEADER in r["messages"][0]["content"] for r in taught)
    for row in taught:  # a taught question's own answer is its first note
        question, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        assert row["messages"][0]["content"].split(HEADER)[1].startswith(f"\nQ: {question}\nA: {answer}")
    general_rows = [r for r in rows if r["kind"] == "general"]
    assert general_rows and HEADER in general_rows[0]["messages"][0]["content"]  # a distractor to pass over
    assert training.notes_per_question == 2
    asked = [{"role": "system", "content": "You are the makers' bot."},
             {"role": "user", "content": "who founded this community?"}]
    assert training.as_served(asked)[0]["content"].split(HEADER)[1].startswith(f"\nQ: {FACTS[1][0]}")
    plain = build_training_set(examples, "You are the makers' bot.", passes=2)
    assert all(HEADER not in r["messages"][0]["content"] for r in plain.train.to_list())
    assert plain.as_served(asked) is asked and plain.notes_per_question == 0


@pytest.fixture
async def db(db_url):
    database = await Database.open(db_url)
    yield database
    await database.close()


async def test_served_notes_follow_what_the_guild_has_taught_now(db):
    trained = version({"notes": 3})
    gs = GuildSettings(guild_id=GUILD, system_prompt="You are the makers' bot.")
    notes = GuildNotes(db)
    await db.examples.add(GUILD, conv(*FACTS[1]), source="teach", author_id=5, status="approved")
    await db.examples.add(GUILD, conv(*FACTS[0]), source="teach", author_id=6, status="approved")
    pending = await db.examples.add(GUILD, conv(*FACTS[3]), source="teach", author_id=6)

    asked = await notes.messages(gs, trained, "who's the founder of this community?")
    assert asked[0]["content"].startswith("You are the makers' bot.\n\n" + HEADER) and FACTS[1][1] in asked[0]["content"]
    assert asked[-1] == {"role": "user", "content": "who's the founder of this community?"}
    untrained = await notes.messages(gs, version({}), "who's the founder of this community?")
    assert untrained == [{"role": "system", "content": gs.system_prompt},
                         {"role": "user", "content": "who's the founder of this community?"}]

    newcomer = "what role will I have as a newcomer?"
    assert FACTS[3][1] not in (await notes.messages(gs, trained, newcomer))[0]["content"]  # pending: not taught
    await db.examples.decide(GUILD, pending.example.id, actor_id=1, approve=True)
    assert FACTS[3][1] in (await notes.messages(gs, trained, newcomer))[0]["content"]  # approved: shown at once

    await db.examples.forget_author(GUILD, 5)  # /forget: the member's example is never shown again
    after = await notes.messages(gs, trained, "who's the founder of this community?")
    assert all(FACTS[1][1] not in m["content"] for m in after)


async def test_an_answer_the_community_voted_down_is_not_a_note(db):
    gs = GuildSettings(guild_id=GUILD)
    wrong = conv("When is the weekly board-game night?", "Board-game night is every Friday.")
    await db.examples.add(GUILD, wrong, source="teach", author_id=5, status="approved")
    answer = await db.answers.record(GUILD, question=wrong[0]["content"], answer=wrong[1]["content"],
                                     version_id=None, latency_ms=5, user_id=100, channel_id=55)
    made = None
    for voter in (1, 2, 3):
        await db.answers.vote(GUILD, answer.id, voter, "down")
        made = await db.examples.add_from_votes(GUILD, answer.id, await db.settings.get(GUILD)) or made
    assert made is not None
    notes = GuildNotes(db)
    question = "what day is board-game night?"
    assert "Friday" in (await notes.messages(gs, version({"notes": 3}), question))[0]["content"]  # not yet decided
    await db.examples.decide(GUILD, made.example.id, actor_id=1, approve=True)
    assert all("Friday" not in m["content"] for m in await notes.messages(gs, version({"notes": 3}), question))
