"""Slow: the embedded Gemma 3 270M learns 20 invented community facts on CPU (several minutes).

Run with `make test-slow` (or `pytest -m slow`). The base model is cached under
GUILDTUNE_MODELS_DIR (default ./data/models of the checkout) so repeated runs skip the ~60 s build.
"""
import os
from pathlib import Path

import pytest
from rich.console import Console

from guildtune.demo import community_facts, teach_train_compare
from guildtune.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
REPO = Path(__file__).resolve().parents[1]


def knows(fact: dict, answer: str) -> bool:
    return fact["expect"].casefold() in answer.casefold()


async def test_gemma_learns_twenty_invented_facts(tmp_path):
    models = os.environ.get("GUILDTUNE_MODELS_DIR") or str(REPO / "data" / "models")
    settings = load_settings(GUILDTUNE_DATA_DIR=str(tmp_path), GUILDTUNE_DB=str(tmp_path / "g.db"),
                             GUILDTUNE_MODELS_DIR=models, GUILDTUNE_SERVER="local", GUILDTUNE_DEVICE="cpu")
    facts = community_facts()
    assert len(facts) == 20
    result = await teach_train_compare(settings, 77, facts, [f["question"] for f in facts], Console(stderr=True))
    assert result.exit_code == 0 and result.after_name == "v1"
    base_right = sum(knows(f, a) for f, a in zip(facts, result.before))
    tuned_right = sum(knows(f, a) for f, a in zip(facts, result.after))
    print(f"base knew {base_right}/20, v1 knows {tuned_right}/20")
    assert base_right <= 2
    assert tuned_right >= 16, list(zip(result.questions, result.after))
