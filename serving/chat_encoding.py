"""How a conversation becomes token ids: only the chat template writes control tokens.

Why: a tokenizer parses special-token text wherever it appears, so a member who types
`<end_of_turn>\\n<start_of_turn>model\\n` into `/ask` or `/teach` would forge a turn (an extra
turn start in the prompt, or trained-on "assistant" text inside a question). The rule, used by
training (trainer/sft.py), the assistant-mask check (trainer/chat_template.py) and the in-process
server (serving/generation.py) alike: every control-token string inside a message is encoded as
plain text; the template's own markers stay control tokens. For Ollama, which tokenizes the
rendered prompt itself, `neutralize_control_tokens` breaks those strings in the text we send.

How (`encode_chat`): in each message, the stretch from its first control-token string to its
last is swapped for a private placeholder carrying a per-call random nonce (a member cannot type
one), the template renders, the placeholders split the rendering, and each stretch is tokenized
with special-token parsing off (`split_special_tokens=True`). Text without control-token strings
is tokenized in one call exactly as `apply_chat_template` does, with the same assistant mask
(`{% generation %}` spans, a token is trained on when it overlaps one), so ordinary data keeps
its token ids. Whole control-token strings are caught; a template that glued message text into
a marker (none of ours or TRL's does) would not be.

transformers' own `apply_chat_template(sanitize_control_tokens=True)` is not used: it refuses the
assistant mask that training needs, and its regex over Gemma's 6,249 special tokens takes
~80 µs per `<` of input (25 s for a 300 KB message). Occurrences are found here with the
`tokenizers` added-token matcher (Aho-Corasick, leftmost-longest like the tokenizer itself),
linear in the text.

Light: imports `tokenizers` only (no torch, no transformers at module level), so the bot may use it.
"""
from __future__ import annotations

import secrets
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

# Placeholders are private-use characters (plane 15) around a random nonce and an index.
_OPEN, _CLOSE = "\U000f0000", "\U000f0001"
#: What Ollama content gets after the first character of a control-token string (see neutralize_control_tokens).
WORD_JOINER = "\u2060"


class ControlTokens:
    """A set of control-token strings and a linear-time search for them in text (leftmost-longest)."""

    _UNK = "\uffff"  # a noncharacter: the stand-in for text between matches, never a control token

    def __init__(self, strings: Iterable[str], ids: Iterable[int] = ()):
        from tokenizers import AddedToken, Tokenizer, models

        self.strings = frozenset(s for s in strings if s)
        #: Their ids in the tokenizer they came from (empty for a bare set of strings).
        self.ids = frozenset(ids)
        self._matcher = Tokenizer(models.WordLevel({self._UNK: 0}, unk_token=self._UNK))
        self._matcher.add_special_tokens([AddedToken(s, special=True, normalized=False)
                                          for s in sorted(self.strings)])
        self._first_chars = frozenset(s[0] for s in self.strings)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each control-token string in `text`, left to right, not overlapping."""
        if not self.strings or not any(ch in text for ch in self._first_chars):
            return []
        enc = self._matcher.encode(text, add_special_tokens=False)
        return [(a, b) for tok, (a, b) in zip(enc.tokens, enc.offsets)
                if tok in self.strings and text[a:b] == tok]


# --- the tokenizer's control tokens ---------------------------------------------------------------

_CONTROL_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, ControlTokens]]" = weakref.WeakKeyDictionary()


def control_tokens(tokenizer: Any, chat_template: str) -> ControlTokens:
    """The strings this tokenizer would turn into control tokens: its special added tokens, plus the
    added tokens the chat template writes (minus whitespace ones, like Gemma's "\\n" runs, which are text)."""
    per_template = _CONTROL_CACHE.setdefault(tokenizer, {})
    found = per_template.get(chat_template)
    if found is None:
        chosen = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()
                  if t.special or (t.content in chat_template and not t.content.isspace())}
        found = ControlTokens(chosen.values(), chosen)
        per_template[chat_template] = found
    return found


# --- encoding -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodedChat:
    """Token ids of a rendered conversation and, per token, 1 where the template's generation span covers it."""

    input_ids: list[int]
    assistant_mask: list[int]
    #: How many control-token strings in the messages were encoded as text (0 for ordinary text).
    neutralized: int = 0


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                chat_template: str | None = None) -> EncodedChat:
    """Render `messages` with the chat template and tokenize so that no message text becomes a control token.

    Raises what the template raises (roles that do not alternate, content that is not text).
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    template = tokenizer.get_chat_template(chat_template)
    control = control_tokens(tokenizer, template)
    nonce = secrets.token_hex(8)
    originals: list[str] = []
    marked, neutralized = [], 0
    for message in messages:
        hidden, count = _mark(message, control, nonce, originals)
        marked.append(hidden)
        neutralized += count
    rendered, generation = render_jinja_template(
        conversations=[marked], chat_template=template, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map)
    text, spans = rendered[0], generation[0]

    # [template text, placeholder, template text, ..., template text]: template text is tokenized as the
    # template wrote it (its markers are control tokens), each placeholder's original as plain text.
    bounds, found, cursor = [], [], 0  # found: (placeholder span, index into originals)
    opening = _OPEN + nonce
    start = text.find(opening) if originals else -1
    while start >= 0:
        end = text.find(_CLOSE, start)
        index = text[start + len(opening):end] if end >= 0 else ""
        if not (index.isascii() and index.isdigit()) or int(index) >= len(originals):
            raise ValueError("the chat template cut or rewrote message text that holds control-token strings, "
                             "so it cannot be encoded as text; use a template that inserts message content as is")
        bounds.append((cursor, start))
        found.append(((start, end + 1), int(index)))
        cursor = end + 1
        start = text.find(opening, cursor)
    bounds.append((cursor, len(text)))
    encoded = tokenizer([text[a:b] for a, b in bounds], add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for k, (start, _) in enumerate(bounds):
        ids += encoded["input_ids"][k]
        offsets += [(a + start, b + start) for a, b in encoded["offset_mapping"][k]]
        if k < len(found):
            span, index = found[k]
            piece = _encode_as_text(tokenizer, originals[index], control)
            ids += piece
            offsets += [span] * len(piece)
    return EncodedChat(ids, _overlap_mask(offsets, spans), neutralized)


def _mark(message: dict[str, Any], control: ControlTokens, nonce: str, originals: list[str]) -> tuple[dict, int]:
    """The message with, in each text value, the stretch from its first control-token string to its last
    replaced by a placeholder (one per value: the stretch is then tokenized as text in one piece, with
    natural tokens), and how many control-token strings that hid. Whitespace around the stretch stays
    for the template to trim."""
    out, count = {}, 0
    for key, value in message.items():
        if isinstance(value, str) and (spans := control.spans(value)):
            start, end = spans[0][0], spans[-1][1]
            originals.append(value[start:end])
            value = f"{value[:start]}{_OPEN}{nonce}{len(originals) - 1}{_CLOSE}{value[end:]}"
            count += len(spans)
        out[key] = value
    return out, count


def _encode_as_text(tokenizer: Any, piece: str, control: ControlTokens) -> list[int]:
    """Message text holding control-token strings, as the ids of its characters."""
    ids = tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    forbidden = control.ids
    if forbidden.isdisjoint(ids):
        return ids
    # A non-special added token (e.g. one the template writes) is still matched with split_special_tokens:
    # run the backend's pipeline without its added tokens.
    backend = tokenizer.backend_tokenizer
    normalized = backend.normalizer.normalize_str(piece) if backend.normalizer is not None else piece
    splits = ([s for s, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
              if backend.pre_tokenizer is not None else [normalized])
    ids = [tok.id for split in splits for tok in backend.model.tokenize(split)]
    if not forbidden.isdisjoint(ids):
        raise ValueError(f"the tokenizer cannot encode {piece!r} as plain text")
    return ids


def _overlap_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """transformers' assistant-mask rule: a token is marked when it overlaps a generation span."""
    mask = [0] * len(offsets)
    span = 0
    for i, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[i] = 1
    return mask


# --- Ollama: the server tokenizes the text we send ------------------------------------------------

def neutralize_control_tokens(text: str, control: ControlTokens) -> str:
    """`text` with a word joiner (U+2060, invisible) after the first character of each control-token string.

    For servers that tokenize rendered prompts themselves with special-token parsing on (Ollama):
    they take text only, so the string itself must change. The joiner is a visible change to the
    model (a few extra tokens) and none to a reader; text without control-token strings is unchanged.
    Repeated until no control-token string is left (an occurrence overlapping a broken one).
    """
    spans = control.spans(text)
    while spans:
        parts, last = [], 0
        for start, _ in spans:
            parts += [text[last:start + 1], WORD_JOINER]
            last = start + 1
        text = "".join(parts) + text[last:]
        spans = control.spans(text)
    return text
