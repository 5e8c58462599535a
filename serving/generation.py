"""The torch half of the in-process server: loading, adapter checks, prompts, tokens to streamed text
(the decoding itself is `serving.batch_generation`, for one question or many).

`serving.local_server` imports this module only inside its worker thread, so the bot process
pays for torch and transformers only once it really answers from a local model.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from serving.chat_encoding import encode_chat
from serving.protocol import GenerationOptions, ModelServerError
from serving.quiet import quiet_libraries

quiet_libraries()

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Architecture fields that must agree between the base an adapter was trained on and ours.
_SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
                 "num_attention_heads", "num_key_value_heads", "head_dim")


def pick_device(device: str) -> str:
    """`auto` means CUDA when there is a GPU, else the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def serving_dtype(device: str) -> torch.dtype:
    """Half precision on a GPU (bf16 where supported), float32 on a CPU. Adapters are loaded in the
    same dtype (LocalServer), so no LoRA layer casts its input up and its output back per token."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_base(model_dir: str, device: str) -> tuple[Any, Any]:
    """Load the base model and its tokenizer once; a clear error says what the folder lacks."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ModelServerError(
            f"The base model folder {folder} has no config.json. Point the local server at a Hugging Face "
            "model folder (the embedded model is prepared by `guildtune` on first use)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=serving_dtype(device))
    except (OSError, ValueError) as exc:
        raise ModelServerError(f"Could not load the base model from {folder}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelServerError(
            f"The tokenizer in {folder} has no chat template, so questions cannot be formatted for the "
            "model. Save the model folder with its chat template (tokenizer_config.json `chat_template`)."
        )
    model.to(device)
    model.eval()
    if device == "cpu":
        speed_up_output_layer(model)
    return model, tokenizer


class WideOutputLinear(torch.nn.Linear):
    """An output layer that computes `x @ W.T` as `(W @ x.T).T`: the same numbers, but on a CPU,
    with a vocabulary-sized W (262k rows for Gemma 3) and a few rows of x (one per answer in a
    batch), the BLAS call this way round runs about 1.8x faster at 4 rows and the same at 1 row.
    The output layer is most of the compute of a small model's decoding step, so this is what lets
    batched answers on a CPU go faster than one at a time (bench/serve_concurrency.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = (self.weight @ flat.T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def speed_up_output_layer(model: Any, min_rows: int = 65536) -> bool:
    """Switch a vocabulary-sized `nn.Linear` output layer to `WideOutputLinear` in place (weights,
    ties and hooks stay as they are); True if it was switched."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.out_features < min_rows:
        return False
    head.__class__ = WideOutputLinear
    return True


def adapter_problem(model: Any, adapter_dir: str) -> str | None:
    """Why this PEFT adapter folder cannot be served beside `model` (None when it can).

    Checks the files, the JSON, the base the adapter was trained on (when that folder is at hand)
    and every tensor's shape against our base's modules, so a wrong-base adapter is refused with a
    message instead of a size-mismatch traceback.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        return f"the adapter folder {folder} does not exist"
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        return f"the adapter folder {folder} has no {ADAPTER_CONFIG} (save it with PeftModel.save_pretrained)"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{config_path} is not valid JSON ({exc})"
    if not isinstance(config, dict) or "peft_type" not in config:
        return f"{config_path} is not a PEFT adapter config (it has no peft_type)"
    weights = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        return f"the adapter folder {folder} has no {ADAPTER_WEIGHTS[0]}"

    trained_on = config.get("base_model_name_or_path")
    if trained_on and (Path(trained_on) / "config.json").is_file():
        try:
            theirs = json.loads((Path(trained_on) / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            theirs = None
        if isinstance(theirs, dict):
            ours = model.config.to_dict()
            ours_text = ours.get("text_config") or ours
            theirs_text = theirs.get("text_config") or theirs
            for key in _SHAPE_FIELDS:
                if key in theirs_text and key in ours_text and theirs_text[key] != ours_text[key]:
                    return (f"the adapter was trained on a different base model ({trained_on}: {key}="
                            f"{theirs_text[key]}, ours has {ours_text[key]})")

    try:
        shapes = _tensor_shapes(weights)
    except Exception as exc:  # a truncated or foreign file: safetensors/torch raise many types
        return f"{weights} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or corrupt"
    if not shapes:
        return f"{weights} holds no tensors"
    return _shape_problem(model, shapes, trained_on)


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return {key: tuple(value.shape) for key, value in state.items()}


def _shape_problem(model: Any, shapes: dict[str, tuple[int, ...]], trained_on: str | None) -> str | None:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    base_name = f" (its adapter_config names {trained_on})" if trained_on else ""
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for marker, expect in ((".lora_A.", "in"), (".lora_B.", "out"),
                               (".lora_embedding_A", "in"), (".lora_embedding_B", "out")):
            if marker in name:
                module_name = name.split(marker)[0]
                module = modules.get(module_name)
                if module is None:
                    return (f"the adapter targets `{module_name}`, which this base model does not have: it was "
                            f"trained on a different base{base_name}")
                size = _module_size(module, expect)
                axis = 1 if expect == "in" else 0  # A is (r, in), B is (out, r); for embeddings in=vocab
                if size is not None and len(shape) == 2 and shape[axis] != size:
                    return (f"the adapter's `{name}` has shape {list(shape)} but this base model's "
                            f"`{module_name}` has {expect}put size {size}: it was trained on a different "
                            f"base{base_name}")
                break
        else:
            if name in params and tuple(params[name].shape) != shape:
                return (f"the adapter's `{name}` has shape {list(shape)} but this base model's has "
                        f"{list(params[name].shape)}: it was trained on a different base{base_name}")
    return None


def _module_size(module: Any, side: str) -> int | None:
    if isinstance(module, torch.nn.Linear):
        return module.in_features if side == "in" else module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings if side == "in" else module.embedding_dim
    return None


def warms_up(device: str) -> bool:
    """Whether a freshly loaded base model decodes a throwaway round first: on a GPU, where a process's
    first round pays one-off costs before its first token (0.8 s on the H200, bench/serve_ttft.py)."""
    return str(device).startswith("cuda")


def decoding_attention(device: str) -> Any:
    """The context decoding runs in: on CUDA, scaled-dot-product attention without its cuDNN backend.

    Why: PyTorch picks cuDNN attention first on Hopper GPUs, and cuDNN builds an execution plan for
    every new shape. Decoding with transformers' growing cache gives every step a new key length, so
    each step paid a plan: on the H200 a step of Gemma 3 270M took 65 ms with new shapes against 33 ms
    when the same shapes came again, and the first round with padded rows spent 1.7 s in its prefill
    (bench/serve_ttft.py). Flash and memory-efficient attention need no plan. Scoped to decoding (the
    backend flags are process-wide): training keeps its own choice."""
    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], device: str) -> dict[str, Any]:
    """Chat messages → input tensors through the tokenizer's own chat template, encoded as training
    encodes them (serving/chat_encoding.py: a question cannot forge a turn)."""
    ids = torch.tensor([encode_chat(tokenizer, messages, add_generation_prompt=True).input_ids], device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def check_fits(model: Any, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse a conversation whose prompt plus answer budget exceeds the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and prompt_tokens + max_tokens > limit:
        raise ModelServerError(
            f"The conversation is too long for the model ({prompt_tokens} prompt tokens + "
            f"{max_tokens} answer tokens > {limit}). Ask with fewer turns or a shorter question."
        )


def pad_token_id(tokenizer: Any) -> int:
    """The id batched prompts are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS plus Gemma's `<end_of_turn>` (and any EOS the model's generation config names)."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
    # One lookup per name, not `get_vocab()`: that builds a dict of the whole vocabulary (262k entries
    # for Gemma 3, ~0.3 s) and this runs before every answer's first token.
    for token in ("<end_of_turn>", "<eos>"):
        found = tokenizer.convert_tokens_to_ids(token)
        if isinstance(found, int) and (found != tokenizer.unk_token_id or token == tokenizer.unk_token):
            candidates.append(found)
    for item in candidates:
        for value in item if isinstance(item, (list, tuple)) else [item]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return ids


def sampling_kwargs(options: GenerationOptions) -> dict[str, Any]:
    """The guild's sampling knobs as `generate` arguments; temperature 0 means greedy decoding."""
    if options.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    return {"do_sample": True, "temperature": float(options.temperature),
            "top_k": int(options.top_k) if options.top_k > 0 else None, "top_p": float(options.top_p)}


class PieceStreamer(BaseStreamer):
    """Hands each generated token's new text to `emit` (possibly "", which still proves progress).

    Decodes a window of the last few tokens, never the whole answer: the text a token adds is
    decode(window + token) minus decode(window), the window starting at the tokens of the last piece
    sent, so a tokenizer whose decoding depends on neighbours (leading spaces, a character split over
    byte tokens) yields the same text as decoding the answer at once. A tail that ends in a
    half-decoded character is held back until it completes. Why: decoding the whole answer at every
    token made each token's work grow with the answer, and in a batched round that runs once per row
    per step (64 rows of 512-token answers: 16k token decodes per step, on the model thread).
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.emit = emit
        self.ids: list[int] = []
        self.start = 0  # the window's first token
        self.read = 0  # tokens before this one are sent
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt itself
            self.prompt_seen = True
            return
        self.add(value.reshape(-1).tolist())

    def add(self, ids: list[int]) -> None:
        """New answer tokens, as plain ids (what `RowStreams` hands each row)."""
        self.ids.extend(ids)
        self.emit(self._advance(final=False))

    def end(self) -> None:
        if self.read < len(self.ids):
            piece = self._advance(final=True)
            if piece:
                self.emit(piece)

    def _advance(self, final: bool) -> str:
        """The new text since the last piece ("" while a character is incomplete); moves the window."""
        sent = self.tokenizer.decode(self.ids[self.start:self.read], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.start:], skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        self.start, self.read = self.read, len(self.ids)
        return text[len(sent):]
