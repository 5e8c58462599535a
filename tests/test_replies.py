"""bot/replies.py: storage's decisions and refusals in words, and Discord's mentions read as ids."""
from __future__ import annotations

import pytest

from bot.replies import decision_text, refusal_text, setting_value
from storage.examples import Decision, UnknownExample
from storage.guild_settings import SettingError
from storage.records import Example
from storage.versions import UnknownVersion, VersionRemoved


def example(status: str) -> Example:
    return Example(id=7, guild_id=1, messages=[], source="teach", source_message_ids=[], author_id=3,
                   status=status, content_hash="", created_at=0.0, updated_at=0.0)


def test_decisions_in_words():
    assert decision_text(Decision(True, example("approved"))) == "Example #7 approved."
    assert decision_text(Decision(False, example("rejected"), decided_by=42)) == (
        "Example #7 was already rejected by <@42>.")
    assert decision_text(Decision(False, example("approved"))) == "Example #7 was already approved."
    assert decision_text(Decision(False, example("pending"), duplicate_of=3)) == (
        "The edited text duplicates example #3; reject this one instead.")


def test_refusals_name_the_command_that_shows_the_choices():
    assert refusal_text(UnknownExample(9)) == "There is no example #9 in this server. Check the id with /review."
    assert refusal_text(VersionRemoved(2)) == (
        "Version v2 was removed from the model server; choose a newer one from /model history.")
    assert refusal_text(UnknownVersion(5)) == "There is no version id 5 in this server."


@pytest.mark.parametrize("name, raw, value", [
    ("moderator_role_ids", "<@&12> 34", [12, 34]), ("review_channel_id", "<#99>", 99), ("review_channel_id", "off", None),
    ("temperature", "0.2", 0.2),
])
def test_mentions_become_ids(name, raw, value):
    assert setting_value(name, raw) == value


def test_a_bad_mention_is_named_as_typed():
    with pytest.raises(SettingError, match=r"moderator_role_ids = '<@&12> @mods' is not valid: expected role mentions"):
        setting_value("moderator_role_ids", "<@&12> @mods")
    with pytest.raises(SettingError, match=r"review_channel_id = '#general' is not valid: expected a channel mention"):
        setting_value("review_channel_id", "#general")
