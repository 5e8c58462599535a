"""Chat templates that mark the assistant's tokens, so SFT trains on the answers only.

`assistant_only_loss` needs `{% generation %}` markers in the template; stock Gemma 3, Llama 3 and
Qwen templates have none, and a template without them trains on nothing while the loss looks
normal. Our templates put the end-of-turn token inside the marked span, so the model learns to stop.

The embedded Gemma 3 270M ships with no template at all, so Gemma's (with markers) is supplied.
Other models keep their own template when it already has markers; otherwise TRL's training variant
for known families, or ours for Gemma / Llama 3 / ChatML-shaped templates. Anything else is refused
with `ChatTemplateError` naming the model and the fix.

Light on purpose: no torch import at module level (TRL is imported only inside functions).
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).parent / "templates"

#: The model families whose template we supply, and the special tokens each template writes.
FAMILY_TOKENS: dict[str, tuple[str, ...]] = {
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}
#: The token that ends an assistant turn in each family (what generation must stop on).
END_OF_TURN: dict[str, str] = {"gemma": "<end_of_turn>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>"}

GEMMA_MODEL_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text"}


class ChatTemplateError(ValueError):
    """The model has no usable chat template for assistant-only training; the message says what to do."""


@cache
def family_template(family: str) -> str:
    """The training chat template (with generation markers) of a family: gemma, llama3 or chatml."""
    if family not in FAMILY_TOKENS:
        raise KeyError(f"unknown chat template family {family!r}; known: {', '.join(FAMILY_TOKENS)}")
    return (TEMPLATES_DIR / f"{family}.jinja").read_text(encoding="utf-8")


def gemma_chat_template() -> str:
    """Gemma's chat template with generation markers (system prompt folded into the first user turn)."""
    return family_template("gemma")


def has_generation_markers(template: str | dict | None) -> bool:
    if not template:
        return False
    from trl.chat_template_utils import has_generation_markers as trl_has_markers

    return trl_has_markers(template)


def _family_by_tokens(text_or_vocab: Any) -> str | None:
    """The family whose special tokens all appear in a template text or a vocabulary."""
    for family, tokens in FAMILY_TOKENS.items():
        if all(tok in text_or_vocab for tok in tokens):
            return family
    return None


def training_chat_template(tokenizer, model_type: str | None = None, model_name: str = "the model") -> str:
    """Return a chat template with `{% generation %}` markers for this tokenizer, or refuse clearly.

    Order: the tokenizer's own template if it already has markers; a template-less Gemma (by
    `model_type` or its special tokens) gets ours; a known template without markers gets TRL's
    training variant; a Gemma/Llama 3/ChatML-shaped template gets ours. Otherwise ChatTemplateError.
    """
    current = tokenizer.chat_template
    if isinstance(current, dict):
        current = current.get("default")
    vocab = tokenizer.get_vocab()
    if current and has_generation_markers(current):
        return current
    if not current:
        family = "gemma" if (model_type or "") in GEMMA_MODEL_TYPES else _family_by_tokens(vocab)
        if family is None or not all(tok in vocab for tok in FAMILY_TOKENS[family]):
            raise ChatTemplateError(
                f"{model_name} has no chat template and is not a family guildtune knows a template for "
                f"(model type {model_type or 'unknown'}). Use an instruction-tuned model whose tokenizer has a "
                f"chat template (tokenizer_config.json / chat_template.jinja), or add one with "
                f"{{% generation %}} markers around the assistant's answer and end-of-turn token.")
        return family_template(family)
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        patched = None
    if patched:
        return patched
    family = _family_by_tokens(current)
    if family is not None and all(tok in vocab for tok in FAMILY_TOKENS[family]):
        return family_template(family)
    raise ChatTemplateError(
        f"the chat template of {model_name} has no {{% generation %}} markers and is not one guildtune can "
        f"patch (known: Gemma, Llama 3, ChatML/Qwen and TRL's list). Without markers, assistant-only training "
        f"would learn nothing. Edit its chat template to wrap each assistant answer and its end-of-turn token in "
        f"{{% generation %}}...{{% endgeneration %}}, or choose another base model.")


def end_of_turn_token(tokenizer) -> str | None:
    """The special token that ends an assistant turn for this tokenizer's family, if known."""
    family = _family_by_tokens(tokenizer.chat_template or "") or _family_by_tokens(tokenizer.get_vocab())
    return END_OF_TURN.get(family) if family else None


def check_assistant_mask(tokenizer, template: str | None = None) -> None:
    """Render a two-turn sample and check the assistant mask: non-empty, answer + end-of-turn only.

    Raises ChatTemplateError when the template would train on nothing or never teach the model to stop.
    """
    sample = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"},
              {"role": "user", "content": "again"}, {"role": "assistant", "content": "pong again"}]
    from serving.chat_encoding import encode_chat

    out = encode_chat(tokenizer, sample, chat_template=template)  # the encoding training uses
    ids, mask = out.input_ids, out.assistant_mask
    if not any(mask):
        raise ChatTemplateError("the chat template marks no assistant tokens: training would learn nothing")
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        trained = [i for i, m in zip(ids, mask) if m]
        if trained.count(eot_id) != 2:
            raise ChatTemplateError(f"the chat template leaves the end-of-turn token {eot} out of the trained "
                                    "tokens: the model would never learn to stop")
