"""Check `guildtune estimate` against measured peak GPU memory.

For each configuration: build a random-init model from a real architecture's config on the GPU
(bf16), add LoRA (r=16, all linear layers) with PEFT, run a few AdamW steps on random tokens at
the given sequence length and batch, and compare `torch.cuda.max_memory_allocated()` with
`trainer.estimate.estimate_memory(...)` for the same settings. The forward computes the full
logits (plain `labels=` loss), so the estimate is asked with `chunked_loss=False`.

Usage (GPU): PYTHONPATH=. python bench/vram_estimate.py [--json out.json]
       (CPU): PYTHONPATH=. python bench/vram_estimate.py --against bench/results/vram_estimate.json
              compares today's estimate with the peaks a GPU run stored (no GPU needed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA_1B = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
                intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500000.0,
                rms_norm_eps=1e-5)

QWEN2_05B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
                 intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1000000.0)

CASES = [  # (name, config, seq_len, batch, gradient checkpointing)
    ("llama-3.2-1B shape", LLAMA_1B, 1024, 4, True),
    ("llama-3.2-1B shape", LLAMA_1B, 1024, 4, False),
    ("gemma-3-270m shape", "embedded", 512, 8, False),
    ("gemma-3-270m shape", "embedded", 1024, 8, True),
    # measured after the logits term was set from the four above: a check on shapes it never saw
    ("qwen2.5-0.5B shape", QWEN2_05B, 2048, 2, True),
    ("qwen2.5-0.5B shape", QWEN2_05B, 512, 4, False),
    ("llama-3.2-1B shape", LLAMA_1B, 2048, 2, True),
]


def measure(config, seq_len: int, batch: int, checkpointing: bool) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), device="cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, optim
    return peak


def main() -> None:
    from transformers import AutoConfig

    from trainer.estimate import EMBEDDED_GEMMA_CONFIG, estimate_memory

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--against", type=Path, help="a stored --json of a GPU run: re-estimate its cases only")
    args = parser.parse_args()
    stored = json.loads(args.against.read_text()) if args.against else None
    if stored is not None and len(stored) != len(CASES):
        raise SystemExit(f"{args.against} has {len(stored)} rows, this script {len(CASES)} cases")
    rows = []
    for i, (name, cfg, seq, batch, ckpt) in enumerate(CASES):
        raw = dict(EMBEDDED_GEMMA_CONFIG) if cfg == "embedded" else dict(cfg)
        if "layer_types" in raw:
            raw["layer_types"] = list(raw["layer_types"])
        config = AutoConfig.for_model(**raw)
        est = estimate_memory(config, "lora", seq_len=seq, batch_size=batch, lora_r=16,
                              gradient_checkpointing=ckpt, chunked_loss=False)
        estimated = est.total_bytes / 2**30
        measured = stored[i]["measured_peak_gib"] if stored is not None else measure(config, seq, batch, ckpt)
        err = (estimated - measured) / measured
        rows.append({"model": name, "seq_len": seq, "batch": batch, "checkpointing": ckpt,
                     "estimated_gib": round(estimated, 3), "measured_peak_gib": round(measured, 3),
                     "error": round(err, 4)})
        print(f"{name:20s} seq {seq:5d} batch {batch} ckpt {str(ckpt):5s}: estimate {estimated:6.2f} GiB, "
              f"measured {measured:6.2f} GiB, error {err:+.1%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
