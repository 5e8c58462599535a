"""Ollama chat templates (Go text/template), stop tokens and control tokens, one per model family.

Ollama only detects a template when it matches one it knows, and a fine-tune answers in garbage
when the TEMPLATE or the stop tokens differ from the format it was trained on. So every `create`
passes the template and stops explicitly, chosen from the same chat template the trainer used.
Each Go template below renders what the family's Hugging Face chat template renders for a
conversation ending with a user turn (plus the generation prompt); BOS is added by Ollama.

Ollama tokenizes the rendered prompt with special-token parsing on everywhere (ollama/ollama#15931,
open; no API field turns it off, and its API takes text, never token ids), so control-token text
in a message would become a control token. `ollama_control_tokens` lists the strings to break in
what we send (serving/chat_encoding.py's `neutralize_control_tokens`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from serving.chat_encoding import ControlTokens


@dataclass(frozen=True)
class ChatFormat:
    family: str
    template: str
    stop: tuple[str, ...]
    #: The family's control tokens a member could type: the template's markers, BOS/EOS and padding.
    control: tuple[str, ...] = ()


# Gemma has no system role: the system text opens the first user turn, as in HF's template.
GEMMA_TEMPLATE = """\
{{- $first := true }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $first $.System }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ $first = false }}{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

LLAMA3_TEMPLATE = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

CHATML_TEMPLATE = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

FORMATS: dict[str, ChatFormat] = {
    "gemma": ChatFormat("gemma", GEMMA_TEMPLATE, ("<end_of_turn>",), (
        "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>")),
    "llama3": ChatFormat(
        "llama3", LLAMA3_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), (
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|begin_of_text|>",
            "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|python_tag|>")
    ),
    "chatml": ChatFormat("chatml", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>")),
}

# A marker that only this family's chat template contains.
_TEMPLATE_MARKERS = (
    ("<start_of_turn>", "gemma"),
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
)

_MODEL_TYPE_FAMILIES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen3": "chatml",
}


def _hf_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str):
            return template
    return None


def family_of_chat_template(template: str) -> str | None:
    for marker, family in _TEMPLATE_MARKERS:
        if marker in template:
            return family
    return None


def chat_format_for(*folders: str | Path) -> ChatFormat:
    """The format to serve a model with: from the first folder's HF chat template that names a
    known family (the adapter folder first: it holds the template training used), else from the
    base model's `model_type`."""
    for folder in map(Path, folders):
        template = _hf_chat_template(folder) if folder.is_dir() else None
        family = family_of_chat_template(template) if template else None
        if family:
            return FORMATS[family]
    for folder in map(Path, folders):
        config = folder / "config.json"
        if config.is_file():
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
            if model_type in _MODEL_TYPE_FAMILIES:
                return FORMATS[_MODEL_TYPE_FAMILIES[model_type]]
    names = ", ".join(str(f) for f in folders)
    raise ValueError(
        f"cannot tell which chat format to serve the model in ({names}): no known chat template "
        f"(Gemma, Llama 3 or ChatML) and no known model_type in config.json. Give the base model a "
        f"chat template in its tokenizer_config.json or add its family to serving/ollama_templates.py."
    )


def ollama_control_tokens(folder: str | Path | None) -> ControlTokens:
    """The strings to break in text sent to Ollama: every known family's control tokens, plus the special
    tokens of the model's Hugging Face tokenizer in `folder` (the same vocabulary as the served GGUF).

    Cached per folder: Gemma's tokenizer.json is 33 MB, read once per process.
    """
    return _control_tokens_of(str(Path(folder).resolve()) if folder else None)


@lru_cache(maxsize=8)
def _control_tokens_of(folder: str | None) -> ControlTokens:
    strings = {s for fmt in FORMATS.values() for s in fmt.control}
    if folder is not None:
        strings |= _special_tokens(Path(folder))
    return ControlTokens(strings)


def _special_tokens(folder: Path) -> set[str]:
    """Special added tokens from tokenizer.json, else tokenizer_config.json's added_tokens_decoder."""
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        added = data.get("added_tokens") or []
    except (OSError, ValueError, AttributeError):
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            added = list((config.get("added_tokens_decoder") or {}).values())
        except (OSError, ValueError, AttributeError):
            return set()
    return {t["content"] for t in added
            if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str)}
