"""One question alone: the in-process server against bare `generate` on the same model and adapters.

Splits the time per token of one answer (LocalServer, batching="off") into what transformers'
eager `generate` costs by itself (the base model alone; then PEFT with the same adapters loaded,
one active) and what the server adds around it (prompt, streaming, the event loop hand-off).
On a GPU a small model's decoding is bound by the host launching ~2,500 small kernels per token,
so the first two rows are the floor the server can reach without CUDA graphs.

Greedy, same prompt, same stop tokens: every row produces the same tokens. Figures: ms per token
after the first (decoding only) and the time to the first token; ratios against bare PEFT generate.

Usage:
  PYTHONPATH=. python bench/serve_overhead.py --device cuda --model DIR     (DIR as in serve_concurrency.py)
  PYTHONPATH=. python bench/serve_overhead.py --model DIR --random-init --tokens 32   (CPU, quick)
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_concurrency import QUESTIONS, make_adapters, resolve_model, version  # noqa: E402


def timed_generate(model, inputs, stops, pad, tokens: int, device: str) -> tuple[float, float, int]:
    """(time to first token, ms per later token, tokens) of one greedy generate, timed per token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    stamps: list[float] = []

    class Clock(BaseStreamer):
        def put(self, value):
            stamps.append(time.perf_counter())

        def end(self):
            pass

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad,
                       streamer=Clock())
    stamps = stamps[1:]  # the first put is the prompt
    return stamps[0] - start, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1) * 1000, len(stamps)


def host_costs(device: str) -> tuple[float, float]:
    """(µs per tiny kernel launch, µs per device-to-host round trip such as `.item()`) on `device`."""
    import torch

    x = torch.zeros(1, device=device)
    for _ in range(50):
        x.add_(1).item()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(2000):
        x.add_(1)
    sync()
    launch = (time.perf_counter() - start) / 2000 * 1e6
    start = time.perf_counter()
    for _ in range(500):
        x.item()
    return launch, (time.perf_counter() - start) / 500 * 1e6


def calls_per_token(model, inputs, stops, pad, device: str) -> tuple[float, float]:
    """(ATen calls, device-to-host copies) per decoded token: a 33-token generate minus a 1-token one.
    On a GPU each ATen call that computes is one kernel launch; each copy to the host waits for the GPU."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = self.to_host = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.calls += 1
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.device.type != "cpu" and (
                    func is torch.ops.aten._local_scalar_dense.default
                    or (isinstance(out, torch.Tensor) and out.device.type == "cpu")):
                self.to_host += 1
            return out

    counts = []
    for tokens in (1, 33):
        counter = Count()
        with torch.inference_mode(), counter:
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           eos_token_id=stops, pad_token_id=pad)
        counts.append((counter.calls, counter.to_host))
    return (counts[1][0] - counts[0][0]) / 32, (counts[1][1] - counts[0][1]) / 32


async def timed_server(server, ver, messages, options) -> tuple[float, float, int]:
    stamps: list[float] = []
    start = time.perf_counter()
    async for _ in server.chat(ver, messages, options):
        stamps.append(time.perf_counter())
    return stamps[0] - start, (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1) * 1000, len(stamps)


async def main(args) -> list[tuple[str, float, float, int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving import generation
    from serving.local_server import LocalServer, adapter_name
    from serving.protocol import GenerationOptions
    from serving.prompting import guild_messages
    from storage.records import GuildSettings

    work = Path(tempfile.mkdtemp(prefix="serve-overhead-"))
    try:
        base, source = resolve_model(args, work)
        paths = make_adapters(base, work, count=args.adapters)
        versions = [version(i + 1, guild=i, adapter=p, base=base) for i, p in enumerate(paths)]
        messages = guild_messages(GuildSettings(guild_id=0), QUESTIONS[0])
        device = generation.pick_device(args.device)
        print(f"model: {source}; device {device}; torch {torch.__version__}; {args.adapters} adapters loaded, "
              f"one active; up to {args.tokens} tokens", flush=True)
        rows = []

        model, tokenizer = generation.load_base(str(base), device)
        inputs = generation.render_prompt(tokenizer, messages, device)
        stops, pad = generation.stop_token_ids(tokenizer, model), tokenizer.pad_token_id
        timed_generate(model, inputs, stops, pad, args.tokens, device)  # warm-up, full length
        rows.append(("bare generate, base model", *timed_generate(model, inputs, stops, pad, args.tokens, device)))
        peft = PeftModel.from_pretrained(model, str(paths[0]), adapter_name=adapter_name(versions[0]),
                                         is_trainable=False, torch_device=device, autocast_adapter_dtype=False)
        for ver in versions[1:]:
            peft.load_adapter(ver.adapter_path, adapter_name=adapter_name(ver), is_trainable=False,
                              torch_device=device, autocast_adapter_dtype=False)
        peft.set_adapter(adapter_name(versions[0]))
        peft.eval()
        timed_generate(peft, inputs, stops, pad, args.tokens, device)
        rows.append(("bare generate, PEFT", *timed_generate(peft, inputs, stops, pad, args.tokens, device)))
        calls, to_host = calls_per_token(peft, inputs, stops, pad, device)
        launch_us, round_trip_us = host_costs(device)
        print(f"PEFT decoding: {calls:.0f} ATen calls and {to_host:.1f} copies to the host per token; here a tiny "
              f"kernel launch costs {launch_us:.1f} us and a round trip to the host {round_trip_us:.1f} us, so the "
              f"host alone needs ~{(calls * launch_us + to_host * round_trip_us) / 1000:.1f} ms per token "
              f"(launch cost x calls + round trips; Python between the calls comes on top)", flush=True)
        del peft, model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        server = LocalServer(str(base), device=device, batching="off", max_loaded_adapters=args.adapters)
        options = GenerationOptions(temperature=0, max_tokens=args.tokens, timeout_s=600)
        try:
            for ver in versions:
                await server.publish(ver)
            await timed_server(server, versions[0], messages, options)  # warm-up, full length
            rows.append(("LocalServer, batching=off", *await timed_server(server, versions[0], messages, options)))
        finally:
            await server.close()
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows) -> None:
    peft_ms = next(ms for name, _, ms, _ in rows if name == "bare generate, PEFT")
    print(f"\n{'':28s} {'ttft s':>7s} {'ms/token':>9s} {'tok/s':>7s} {'tokens':>6s} {'x bare PEFT':>11s}")
    for name, ttft, ms, n in rows:
        print(f"{name:28s} {ttft:7.3f} {ms:9.2f} {1000 / ms:7.1f} {n:6d} {ms / peft_ms:11.2f}")
    # Note: the server streams text pieces; a piece held back for a multi-byte character merges two
    # tokens, so its token count can be a little lower than generate's.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--model", default="embedded:gemma-3-270m", help="as in bench/serve_concurrency.py")
    parser.add_argument("--models-dir")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    report(asyncio.run(main(arguments)))
