"""Has a version drifted from its base model on questions that are not the community's?

A fact-learning run can wreck everything else (one run on 30 facts once took the loss on general
instructions from 1.97 to 5.98). The yardstick: the base model's own greedy answers to a fixed,
shipped set of general prompts (`trainer/data/drift_prompts.json`, written for the project); the
drift of a version is how much worse it predicts those answers than the base does,
`(nll_version - nll_base) / nll_base`. The base's answers and its own loss on them are computed
once per base model, system prompt and prompt set, and cached as JSON beside the model cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from trainer.recall import greedy_answers

#: Tokens of each base answer kept as the reference.
REFERENCE_TOKENS = 64
#: Bump when what a cache file holds changes.
CACHE_VERSION = 1


def drift_prompts() -> list[str]:
    return json.loads(files("trainer").joinpath("data/drift_prompts.json").read_text(encoding="utf-8"))


def general_prompt_messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}]
    if system_prompt and system_prompt.strip():
        messages.insert(0, {"role": "system", "content": system_prompt.strip()})
    return messages


@dataclass
class DriftReference:
    """The base's answers (as conversations to score) and the base's mean NLL on them."""

    conversations: list[list[dict[str, str]]]
    base_nll: float


def base_fingerprint(base_dir: str | Path) -> str:
    """Changes when the base model's files change (config and weight files: names, sizes, mtimes)."""
    folder = Path(base_dir).resolve()
    parts = [str(folder)]
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin", ".model") and path.is_file():
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_path(cache_dir: Path, base_dir: str | Path, system_prompt: str | None, prompts: list[str]) -> Path:
    key = json.dumps([CACHE_VERSION, base_fingerprint(base_dir), system_prompt or "", prompts, REFERENCE_TOKENS])
    return cache_dir / f"drift-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def base_view(model: Any):
    """A context in which a PEFT model answers as its base (adapter off); a plain model is the base."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def reference(model: Any, tokenizer: Any, base_dir: str | Path, system_prompt: str | None, cache_dir: Path,
              max_length: int, batch_size: int) -> DriftReference:
    """The cached reference for this base and system prompt, made with `model`'s base view when missing."""
    from trainer.sft import mean_token_nll

    prompts = drift_prompts()
    path = _cache_path(Path(cache_dir), base_dir, system_prompt, prompts)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return DriftReference(data["conversations"], float(data["base_nll"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # rebuilt below
    asked = [general_prompt_messages(p, system_prompt) for p in prompts]
    with base_view(model):
        answers = greedy_answers(model, tokenizer, asked, [REFERENCE_TOKENS] * len(asked), batch_size)
        conversations = [[*m, {"role": "assistant", "content": a}] for m, a in zip(asked, answers) if a.strip()]
        if not conversations:
            raise RuntimeError("the base model gave no answer to any drift prompt; cannot measure drift")
        base_nll, _ = mean_token_nll(model, tokenizer, {"messages": conversations}, max_length, batch_size)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"conversations": conversations, "base_nll": base_nll}, ensure_ascii=False))
    os.replace(tmp, path)
    return DriftReference(conversations, base_nll)


def relative_drift(model: Any, tokenizer: Any, ref: DriftReference, max_length: int, batch_size: int
                   ) -> tuple[float, float]:
    """(drift, the version's NLL): how much worse than the base `model` predicts the base's answers."""
    from trainer.sft import mean_token_nll

    nll, _ = mean_token_nll(model, tokenizer, {"messages": ref.conversations}, max_length, batch_size)
    return (nll - ref.base_nll) / ref.base_nll if ref.base_nll > 0 else 0.0, nll
