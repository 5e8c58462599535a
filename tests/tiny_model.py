"""A tiny random-init causal LM saved as a normal Hugging Face folder, built offline in about a second.

`make_tiny_model_dir(path, arch)` writes config.json, model.safetensors, generation_config.json and
tokenizer files (a byte-level BPE trained on a few sentences, with the family's special tokens and
a chat template with generation markers). Two architectures:
- "gemma3": Gemma3ForCausalLM (Gemma3TextConfig), Gemma special tokens and Gemma's template —
  the shape of the embedded base model (merged-publish path for Ollama).
- "llama": LlamaForCausalLM with Llama 3 special tokens and template — Ollama takes LoRA
  adapters for llama, so the adapter-publish path is tested with this one.

Session fixtures `tiny_model_dir` and `tiny_llama_dir` build each once per test session.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

_CORPUS = """\
The guild meets every Friday evening in the voice channel. Members teach the bot facts about the server.
Moderators approve examples before training. The bot answers questions with what it learned.
What is the capital of France? The capital of France is Paris. How many legs does a spider have? Eight.
Hello! Hi there, how can I help you today? Thanks, that was helpful. You are welcome.
Rules: be kind, no spam, keep topics in their channels. The raid starts at nine. Bring snacks and potions.
ping pong again yes no maybe 0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z
"""

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
LLAMA_SPECIALS = ["<|finetune_right_pad_id|>", "<|end_of_text|>", "<|begin_of_text|>", "<unk>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(arch: str, vocab_size: int = 512):
    """Only the tokenizer of a tiny model: "gemma3", "llama" or "chatml" (Qwen's special tokens and
    our ChatML template; no tiny model has that architecture)."""
    return _tokenizer(arch, vocab_size)


def _tokenizer(arch: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.chat_template import family_template

    specials = {"gemma3": GEMMA_SPECIALS, "llama": LLAMA_SPECIALS, "chatml": CHATML_SPECIALS}[arch]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    if arch == "gemma3":
        names = dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
        template = family_template("gemma")
        extra = ["<start_of_turn>", "<end_of_turn>"]
    elif arch == "llama":
        names = dict(pad_token="<|finetune_right_pad_id|>", eos_token="<|end_of_text|>",
                     bos_token="<|begin_of_text|>", unk_token="<unk>")
        template = family_template("llama3")
        extra = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    else:
        names = dict(pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>")
        template = family_template("chatml")
        extra = ["<|im_start|>", "<|im_end|>"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=extra, **names)
    if arch == "chatml":
        fast.add_tokens(["<think>", "</think>"])  # as Qwen3 has them: added tokens, not special ones
    fast.chat_template = template
    return fast


def make_tiny_model_dir(path: str | Path, arch: str = "gemma3", vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny random-init model folder for `arch` ("gemma3" or "llama") at `path`; return the path."""
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, LlamaConfig,
                              LlamaForCausalLM)

    if arch not in ("gemma3", "llama"):
        raise ValueError(f"unknown tiny model arch {arch!r}; use 'gemma3' or 'llama'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(arch, vocab_size)
    eot = tok.convert_tokens_to_ids("<end_of_turn>" if arch == "gemma3" else "<|eot_id|>")
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if arch == "gemma3":
        config = Gemma3TextConfig(**common, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                                  query_pre_attn_scalar=16, tie_word_embeddings=True)
        model = Gemma3ForCausalLM(config)
    else:
        config = LlamaConfig(**common, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                               eos_token_id=[tok.eos_token_id, eot])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "guildtune_tiny.json").write_text(json.dumps({"arch": arch, "seed": seed}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Gemma 3 model folder, built once per session. Treat it as read-only."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama model folder (Llama 3 template), built once per session. Treat it as read-only."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), "llama")


def make_tiny_qwen2_dir(path: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2ForCausalLM folder: config and weights only (ChatML is picked from model_type;
    the GGUF-adapter path needs no tokenizer)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return Path(path)


def make_tiny_adapter(base_dir: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter for a tiny model with non-zero B (as after training), so outputs change."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return Path(out)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model_dir) -> tuple[str, str]:
    """(base folder, adapter folder) for the tiny Gemma 3. Treat both as read-only."""
    return str(tiny_model_dir), str(make_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter"))
