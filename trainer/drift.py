"""Has a version drifted from its base model on questions that are not the community's?

A fact-learning run can wreck everything else (one run on 30 facts once took the loss on general
instructions from 1.97 to 5.98). The yardstick: the base model's own greedy answers to a fixed,
shipped set of general prompts (`trainer/data/drift_prompts.json`, written for the project); the
drift of a version is how much worse it predicts those answers than the base does,
`(nll_version - nll_base) / nll_base`. The base's answers are generated once per base model and
prompt set (the slow part, before a machine's first run: `prepare_base_answers`), the base's loss on
them once per system prompt, and both cached as JSON beside the model cache.

The same base answers, to the shipped general instructions' questions, are what a run mixes back in
against forgetting (`general_answers="base"`, trainer/dataset.py): training on what the base itself
says anchors the adapter to the base's behaviour, where written answers pull it away from it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

from trainer.recall import greedy_answers

#: Tokens of each base answer kept as the reference.
REFERENCE_TOKENS = 32
#: Bump when what a cache file holds changes.
CACHE_VERSION = 2


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


def _cache_path(cache_dir: Path, base_dir: str | Path, kind: str, parts: list) -> Path:
    key = json.dumps([CACHE_VERSION, base_fingerprint(base_dir), kind, *parts, REFERENCE_TOKENS])
    return cache_dir / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _read_cache(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or torn: rebuilt by the caller


def _write_cache(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


def base_view(model: Any):
    """A context in which a PEFT model answers as its base (adapter off); a plain model is the base."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def cached_base_answers(base_dir: str | Path, prompts: list[str], cache_dir: Path) -> list[str] | None:
    """The base's cached greedy answers to `prompts`, or None when they were never made."""
    data = _read_cache(_cache_path(Path(cache_dir), base_dir, "answers", [prompts]))
    return data if isinstance(data, list) and len(data) == len(prompts) else None


def base_answers(model: Any, tokenizer: Any, base_dir: str | Path, prompts: list[str], cache_dir: Path,
                 batch_size: int = 64) -> list[str]:
    """The base model's greedy answers to `prompts` (no system prompt), made with `model`'s base view once
    per base model and prompt set, then read from the cache: the slow part (generation) runs once per machine."""
    answers = cached_base_answers(base_dir, prompts, cache_dir)
    if answers is None:
        asked = [general_prompt_messages(p, None) for p in prompts]
        with base_view(model):
            answers = greedy_answers(model, tokenizer, asked, [REFERENCE_TOKENS] * len(asked), batch_size)
        _write_cache(_cache_path(Path(cache_dir), base_dir, "answers", [prompts]), answers)
    return answers


def as_conversations(prompts: list[str], answers: list[str], system_prompt: str | None) -> list[list[dict[str, str]]]:
    """(prompt, answer) pairs as conversations under the guild's system prompt; empty answers are left out."""
    return [[*general_prompt_messages(p, system_prompt), {"role": "assistant", "content": a}]
            for p, a in zip(prompts, answers) if a.strip()]


def reference(model: Any, tokenizer: Any, base_dir: str | Path, system_prompt: str | None, cache_dir: Path,
              max_length: int, batch_size: int) -> DriftReference:
    """The base's answers to the drift prompts under this system prompt, and the base's NLL on them (cached)."""
    from trainer.sft import mean_token_nll

    prompts = drift_prompts()
    answers = base_answers(model, tokenizer, base_dir, prompts, cache_dir)
    conversations = as_conversations(prompts, answers, system_prompt)
    if not conversations:
        raise RuntimeError("the base model gave no answer to any drift prompt; cannot measure drift")
    path = _cache_path(Path(cache_dir), base_dir, "drift", [system_prompt or "", prompts])
    cached = _read_cache(path)
    if isinstance(cached, dict) and isinstance(cached.get("base_nll"), float):
        return DriftReference(conversations, cached["base_nll"])
    with base_view(model):
        base_nll, _ = mean_token_nll(model, tokenizer, {"messages": conversations}, max_length, batch_size)
    _write_cache(path, {"base_nll": base_nll})
    return DriftReference(conversations, base_nll)


def served_reference(model: Any, tokenizer: Any, ref: DriftReference,
                     served: Callable[[list[dict[str, str]]], list], max_length: int, batch_size: int
                     ) -> DriftReference:
    """The reference with each prompt as the version will be asked it (`served`: its notes added), and the
    base's NLL on that, so version and base are compared on the same input. Nothing is cached: the notes
    follow the guild's examples. Unchanged when `served` adds nothing."""
    from trainer.sft import mean_token_nll

    conversations = [served(c) for c in ref.conversations]
    if conversations == ref.conversations:
        return ref
    with base_view(model):
        base_nll, _ = mean_token_nll(model, tokenizer, {"messages": conversations}, max_length, batch_size)
    return DriftReference(conversations, base_nll)


def prepare_base_answers(base_dir: str | Path, cfg: Any, cache_dir: Path, general_questions: list[str]
                         ) -> list[str]:
    """The base's answers to the general questions (for the mix) and to the drift prompts (for the gate),
    loading the base once when either is missing from the cache. Returns the general questions' answers."""
    from trainer.sft import evaluation_model

    wanted = [general_questions, drift_prompts()]
    cached = [cached_base_answers(base_dir, prompts, cache_dir) for prompts in wanted]
    if any(answers is None for answers in cached):
        with evaluation_model(base_dir, None, cfg) as (model, tokenizer):
            cached = [answers if answers is not None else base_answers(model, tokenizer, base_dir, prompts, cache_dir)
                      for prompts, answers in zip(wanted, cached)]
    return cached[0]


def relative_drift(model: Any, tokenizer: Any, ref: DriftReference, max_length: int, batch_size: int
                   ) -> tuple[float, float]:
    """(drift, the version's NLL): how much worse than the base `model` predicts the base's answers."""
    from trainer.sft import mean_token_nll

    nll, _ = mean_token_nll(model, tokenizer, {"messages": ref.conversations}, max_length, batch_size)
    return (nll - ref.base_nll) / ref.base_nll if ref.base_nll > 0 else 0.0, nll
