"""Shared fixtures: the tiny model folders (built once per session) and an offline environment."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_model import tiny_adapter, tiny_llama_dir, tiny_model_dir  # noqa: E402,F401  (fixtures)
