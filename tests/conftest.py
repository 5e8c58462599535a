"""Shared fixtures: the tiny model folders (built once per session), the stand-in Ollama, an offline environment."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from ollama_standin import OllamaStandIn  # noqa: E402
from tiny_model import tiny_adapter, tiny_llama_dir, tiny_model_dir  # noqa: E402,F401  (fixtures)


@pytest.fixture
async def standin():
    """A started stand-in Ollama HTTP server on loopback (tests/ollama_standin.py)."""
    server = OllamaStandIn()
    await server.start()
    yield server
    await server.stop()
