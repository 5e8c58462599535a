"""The custom ids of the bot's buttons and forms, each prefix spelled once.

A button outlives the process that posted it: after a restart Discord still sends the id that a
message posted last week carries, and a `DynamicItem` template must match it. So these prefixes are
part of the bot's interface. The review buttons keep "gt", the prefix they had before the others were
named after the project: review posts already in servers' channels carry it.
"""
from __future__ import annotations

PREFIX = "guildtune"
#: 👍 / 👎 / correct under an /ask answer: `ANSWER:<answer id>:<up|down|correct>`
ANSWER = f"{PREFIX}:answer"
#: /forget's buttons: `FORGET:<member id>:<confirm|cancel>`
FORGET = f"{PREFIX}:forget"
#: a review card's or post's buttons: `REVIEW:<action>:<example id>:<card|post>`; its forms `REVIEW-edit:…`
REVIEW = "gt:review"
