"""Bytes one Gemma 3 270M version sends to Ollama: merged model (before) vs GGUF LoRA adapter (after).

Runs on a CPU. The base is the embedded model when its cache exists (`<models_dir>/gemma-3-270m`),
else random weights of its shape (tests/tiny_model's small tokenizer then stands in for Gemma's,
which makes "before" smaller than it really is: the ratio is conservative). The adapter is the
trainer's default LoRA (TrainConfig: r, alpha, all-linear) with non-zero B, as after training.
Each publish goes through the real `OllamaServer` against the stand-in Ollama; the figure is the
sum of blob bytes uploaded, which Ollama stores once more per version.
- before: the merged route (what every Gemma 3 version took until now);
- after: the GGUF adapter route, on an Ollama whose runner applies LoRA to Gemma 3;
- own_engine: today's released Ollama runs Gemma 3 on its own engine, which refuses LoRA at load:
  the first publish tries the adapter, then merges; later ones go merged directly (not re-measured).

Usage: PYTHONPATH=. python bench/ollama_publish_bytes.py [--models-dir DIR] [--out bench/results/ollama_publish_bytes.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGET_RATIO = 0.10


def base_folder(models_dir: Path | None, work: Path) -> tuple[Path, str]:
    """The embedded model's cached folder, or a random-weights folder of its shape."""
    from trainer.base_model import embedded_gemma_dir, is_complete

    if models_dir is not None and is_complete(embedded_gemma_dir(models_dir)):
        return embedded_gemma_dir(models_dir), "embedded Gemma 3 270M (cached)"
    import torch
    from tiny_model import make_tiny_model_dir
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from trainer.estimate import EMBEDDED_GEMMA_CONFIG

    out = work / "random-base"
    tokenizer_src = make_tiny_model_dir(work / "tokenizer-src", "gemma3")
    shape = {k: v for k, v in EMBEDDED_GEMMA_CONFIG.items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    Gemma3ForCausalLM(Gemma3TextConfig(**shape, dtype="bfloat16")).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_src / name).is_file():
            shutil.copy(tokenizer_src / name, out / name)
    return out, "random weights of the Gemma 3 270M shape"


def trained_looking_adapter(base: Path, out: Path) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.config import TrainConfig
    from trainer.sft import lora_config

    cfg = TrainConfig()
    lora = lora_config(cfg)
    lora.init_lora_weights = False  # B non-zero, as after training
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    torch.manual_seed(1)
    get_peft_model(model, lora).save_pretrained(out)
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "target_modules": cfg.target_modules,
            "adapter_bytes_on_disk": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


async def publish_bytes(base: Path, adapter: Path, work: Path, *, engine_applies_lora: bool,
                        force_merged: bool) -> dict:
    from ollama_standin import OllamaStandIn

    from serving.ollama_server import OllamaServer
    from storage.records import ModelVersion

    standin = OllamaStandIn(engine_applies_lora=engine_applies_lora)
    await standin.start()
    server = OllamaServer(standin.url, base_tag="gemma3:270m", base_model_dir=base, work_dir=work / "staging",
                          timeout_s=600, publish_timeout_s=3600)
    if force_merged:
        server.lora_refused.add(json.loads((base / "config.json").read_text())["model_type"])
    version = ModelVersion(id=1, guild_id=1, number=1, run_id=1, tag=None, adapter_path=str(adapter),
                           base_model=str(base), metrics={}, status="ready", n_examples=1, created_at=time.time())
    try:
        started = time.perf_counter()
        tag = await server.publish(version)
        seconds = time.perf_counter() - started
        creates = [body for _, path, body in standin.requests if path == "/api/create"]
        sizes = {digest: len(data) for digest, data in standin.blobs.items()}
        final = creates[-1]
        files = {rel: sizes[d] for rel, d in {**final.get("files", {}), **final.get("adapters", {})}.items()}
        uploaded = sum(size for _, path, size in standin.requests if path.startswith("/api/blobs/"))
        return {"tag": tag, "route": "gguf adapter" if "adapters" in final else "merged files",
                "creates": len(creates), "uploaded_bytes": uploaded, "final_files": files,
                "final_bytes": sum(files.values()), "seconds": round(seconds, 1)}
    finally:
        await server.close()
        await standin.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="the project's model cache (default: the settings' GUILDTUNE_MODELS_DIR)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/ollama_publish_bytes.json")
    args = parser.parse_args()
    if args.models_dir is None:
        from guildtune.settings import load_settings

        args.models_dir = load_settings().models_dir
    with tempfile.TemporaryDirectory(prefix="guildtune-bytes-") as tmp:
        work = Path(tmp)
        base, weights = base_folder(args.models_dir, work)
        lora = trained_looking_adapter(base, work / "adapter")
        before = await publish_bytes(base, work / "adapter", work, engine_applies_lora=True, force_merged=True)
        after = await publish_bytes(base, work / "adapter", work, engine_applies_lora=True, force_merged=False)
        own_engine = await publish_bytes(base, work / "adapter", work, engine_applies_lora=False, force_merged=False)
    ratio = after["uploaded_bytes"] / before["uploaded_bytes"]
    result = {
        "base": weights, "lora": lora, "before_merged": before, "after_gguf_adapter": after,
        "own_engine_first_publish": own_engine,
        "ratio_after_over_before": round(ratio, 5), "target_ratio": TARGET_RATIO, "target_met": ratio <= TARGET_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    mb = 1e6
    print(f"base: {weights}; LoRA r={lora['r']} alpha={lora['alpha']} {lora['target_modules']}")
    print(f"before (merged):      {before['uploaded_bytes'] / mb:9.1f} MB uploaded in {before['seconds']} s")
    print(f"after (GGUF adapter): {after['uploaded_bytes'] / mb:9.1f} MB uploaded in {after['seconds']} s")
    print(f"ratio after/before:   {ratio:.4f} (target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"Ollama's own engine (Gemma 3 today), first publish: {own_engine['uploaded_bytes'] / mb:.1f} MB, "
          f"ends {own_engine['route']}; later publishes go merged directly")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
