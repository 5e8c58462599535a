"""Where a batched round's time to first token goes, and what is slow only the first time.

Three parts, on the server's own code (LocalServer, serving.batch_generation), same model and
adapters as bench/serve_concurrency.py (4 guilds' LoRA adapters, r=16, all linear layers):

  shapes   rounds called directly on the model thread with chosen rows (batch size, prompt
           width, which adapters), each timed per phase: setup (generate_rows up to the first
           streamer call), prefill (to the first token), each later step. Repeating a shape and
           changing one thing at a time shows which first-time cost (new width, new batch size,
           new adapter set, a freshly loaded adapter, padding) is paid per round.
  profile  torch.profiler over one mixed round's prefill: the ops with the most host time, and
           how many host-device copies and synchronisations it made.
  trace    serve_concurrency's levels (N questions at once, a swap of guild 0 in the middle),
           every round's phases stamped: ask -> picked -> generate -> prompt seen -> first token
           -> first text sent -> first text received by the asker.

--variants: "after" is the server as it is; "before" the server before session 7 (rounds of several
adapters through PEFT's own `adapter_names`, attention free to pick cuDNN). Each variant is a fresh
LocalServer in the same process, so the first variant also shows the process's first-use costs.

Usage:
  PYTHONPATH=. python bench/serve_ttft.py --device cuda --model DIR --random-init --variants after,before
  PYTHONPATH=. python bench/serve_ttft.py --model DIR --random-init --parts shapes --steps 4   (CPU, quick)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_concurrency import (QUESTIONS, make_adapters, one_level, resolve_model, server_before_session7,  # noqa: E402
                               version)

STAMPS: list[float] = []  # RowStreams.put times of the round being timed


def install_clocks():
    """Stamp every streamer call (one per step: generate copies each step's tokens to the host there)."""
    from serving import batch_generation

    class TimedStreams(batch_generation.RowStreams):
        def put(self, value):
            STAMPS.append(time.perf_counter())
            super().put(value)

    batch_generation.RowStreams = TimedStreams


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompt_of_width(server, width: int, index: int):
    """A real chat prompt (QUESTIONS[index]) cut or lengthened with its own tokens to `width` ids."""
    import torch
    from serving.generation import render_prompt
    from serving.prompting import guild_messages
    from storage.records import GuildSettings

    ids = render_prompt(server._tokenizer, guild_messages(GuildSettings(guild_id=0), QUESTIONS[index % len(QUESTIONS)]),
                        server._device)["input_ids"][0]
    head, rest = ids[:1], ids[1:]
    if width <= ids.shape[0]:
        return torch.cat([head, rest[rest.shape[0] - (width - 1):]])
    filler = rest.repeat(width // rest.shape[0] + 1)[: width - ids.shape[0]]
    return torch.cat([head, filler, rest])


def timed_round(server, spec: list[tuple[str | None, int]], steps: int) -> dict:
    """One round of rows (adapter name or None, prompt width), as LocalServer._answer_round runs it."""
    import threading

    from serving import batch_generation
    from serving.protocol import GenerationOptions

    options = GenerationOptions(temperature=0, max_tokens=steps, timeout_s=600)
    rows = [batch_generation.Row(prompt_of_width(server, width, i), steps, threading.Event(), lambda _: None,
                                 lambda: None) for i, (_, width) in enumerate(spec)]
    names = [name for name, _ in spec]
    sync(server._device)
    STAMPS.clear()
    start = time.perf_counter()
    if len(set(names)) == 1:
        with server._selected(names[0]):
            batch_generation.generate_rows(server._peft or server._base, server._tokenizer, rows, options)
    else:
        batch_generation.generate_rows(server._peft, server._tokenizer, rows, options,
                                       adapter_names=[n or "__base__" for n in names])
    sync(server._device)
    end = time.perf_counter()
    gaps = [(b - a) * 1000 for a, b in zip(STAMPS[1:], STAMPS[2:])]
    return {"setup_ms": (STAMPS[0] - start) * 1000, "prefill_ms": (STAMPS[1] - STAMPS[0]) * 1000,
            "first_token_ms": (STAMPS[1] - start) * 1000,
            "step_ms": statistics.median(gaps) if gaps else float("nan"),
            "first_step_ms": gaps[0] if gaps else float("nan"), "total_ms": (end - start) * 1000}


def shapes(server, names: list[str], fresh, steps: int) -> list[tuple[str, dict]]:
    """The experiment list: each line changes one thing against the one before."""
    a, b, c, d = names
    four = [a, b, c, d]
    out = []

    def run(label, spec):
        figures = timed_round(server, spec, steps)
        out.append((label, figures))
        print(f"  {label:44s} setup {figures['setup_ms']:7.1f}  prefill {figures['prefill_ms']:7.1f}  "
              f"first step {figures['first_step_ms']:7.1f}  step {figures['step_ms']:6.1f} ms", flush=True)

    run("1 row, 1 adapter, width 40", [(a, 40)])
    run("same again", [(a, 40)])
    run("1 row, new width 44", [(a, 44)])
    run("4 rows, 1 adapter, padded, width 48 (new)", [(a, 48), (a, 45), (a, 43), (a, 41)])
    run("same again", [(a, 48), (a, 45), (a, 43), (a, 41)])
    run("4 rows, 4 adapters, width 52 (new)", [(n, 52 - 2 * i) for i, n in enumerate(four)])
    run("same again", [(n, 52 - 2 * i) for i, n in enumerate(four)])
    run("4 rows, 4 adapters, new width 56", [(n, 56 - 2 * i) for i, n in enumerate(four)])
    run("16 rows, 4 adapters, width 56 (new batch)", [(four[i % 4], 56 - (i % 5)) for i in range(16)])
    run("16 rows, 4 adapters, new width 60", [(four[i % 4], 60 - (i % 5)) for i in range(16)])
    run("same again", [(four[i % 4], 60 - (i % 5)) for i in range(16)])
    run("4 rows, 4 adapters, no padding, width 64 (new)", [(n, 64) for n in four])
    run("4 rows, base + 3 adapters, width 56", [(None, 56), (b, 54), (c, 52), (d, 50)])
    new = fresh()  # a swap: load a fresh adapter, as publish does
    run("4 rows, fresh adapter + 3, width 56", [(new, 56), (b, 54), (c, 52), (d, 50)])
    run("same again", [(new, 56), (b, 54), (c, 52), (d, 50)])
    run("64 rows, 4 adapters, width 60", [(four[i % 4], 60 - (i % 5)) for i in range(64)])
    return out


def profile(server, names: list[str], width: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    spec = [(names[i % 4], width - (i % 3)) for i in range(4)]
    timed_round(server, spec, 1)  # warm this shape first: the profile shows the steady cost
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if server._device.startswith("cuda") else [])
    with torch.profiler.profile(activities=activities) as prof:
        timed_round(server, spec, 2)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=44), flush=True)
    if server._device.startswith("cuda"):
        print(events.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=44), flush=True)
    for name in ("cudaStreamSynchronize", "cudaMemcpyAsync", "aten::index", "aten::index_put_", "aten::_to_copy",
                 "cudaLaunchKernel", "aten::addmm_", "aten::mm", "aten::linear"):
        match = [e for e in events if e.key == name]
        if match:
            print(f"  {name:24s} calls {match[0].count:6d}  self cpu {match[0].self_cpu_time_total / 1000:8.1f} ms")


async def trace(server, versions, levels: list[int], tokens: int) -> None:
    """serve_concurrency's levels with every round's phases stamped (seconds from the level's start)."""
    from transformers import AutoTokenizer

    from serving import batch_generation, local_server
    from serving.protocol import GenerationOptions

    marks: dict[str, list[float]] = {}
    real_answer, real_pick = server._answer_round, server._pick_round
    real_ensure = server._ensure_adapter

    def pick(waiting):
        marks.setdefault("pick", []).append(time.perf_counter())
        return real_pick(waiting)

    def answer_round(questions):
        marks.setdefault("round", []).append(time.perf_counter())
        marks.setdefault("round_rows", []).append(len(questions))
        STAMPS.clear()
        real_answer(questions)
        marks.setdefault("round_end", []).append(time.perf_counter())
        marks.setdefault("puts", []).append(list(STAMPS[:3]))

    def ensure(version, keep=frozenset()):
        loaded = local_server.adapter_name(version) in server._adapters
        t = time.perf_counter()
        out = real_ensure(version, keep)
        if not loaded:
            marks.setdefault("adapter_load_s", []).append(time.perf_counter() - t)
        return out

    real_generate = batch_generation.generate_rows

    def generate(*args, **kwargs):
        marks.setdefault("generate", []).append(time.perf_counter())
        return real_generate(*args, **kwargs)

    server._pick_round, server._worker._pick = pick, pick
    server._answer_round = server._worker._answer = answer_round
    server._ensure_adapter = ensure
    batch_generation.generate_rows = generate
    try:
        tokenizer = AutoTokenizer.from_pretrained(server.base_model_dir)
        active = {g: versions[g] for g in range(4)}
        spare = versions[4:]
        options = GenerationOptions(temperature=0, max_tokens=tokens, timeout_s=600)
        for n in levels:
            marks.clear()
            start = time.perf_counter()
            fig = await one_level(server, tokenizer, active, spare, n, options)
            rel = lambda t: t - start  # noqa: E731
            print(f"  {n:3d} questions: ttft p50 {fig['ttft_p50_s']:.3f} p95 {fig['ttft_p95_s']:.3f} s, "
                  f"{fig['tokens_per_s']:.1f} tok/s; adapter loads {[round(x, 3) for x in marks.get('adapter_load_s', [])]} s")
            for i, (t_round, rows) in enumerate(zip(marks.get("round", []), marks.get("round_rows", []))):
                puts = marks["puts"][i] if i < len(marks.get("puts", [])) else []
                gen = marks["generate"][i] if i < len(marks.get("generate", [])) else float("nan")
                print(f"     round {i}: {rows} rows, picked {rel(marks['pick'][i]):.3f}  generate {rel(gen):.3f}  "
                      f"prompt seen {rel(puts[0]) if puts else float('nan'):.3f}  first token "
                      f"{rel(puts[1]) if len(puts) > 1 else float('nan'):.3f}  second "
                      f"{rel(puts[2]) if len(puts) > 2 else float('nan'):.3f}  end {rel(marks['round_end'][i]):.3f} s",
                      flush=True)
    finally:
        server._pick_round = server._worker._pick = real_pick
        server._answer_round = server._worker._answer = real_answer
        server._ensure_adapter = real_ensure
        batch_generation.generate_rows = real_generate


async def main(args) -> None:
    import torch

    from serving.local_server import LocalServer, adapter_name

    install_clocks()
    from serving import batch_generation

    real_warm_up = batch_generation.warm_up

    def timed_warm_up(*args, **kwargs):
        start = time.perf_counter()
        real_warm_up(*args, **kwargs)
        print(f"  the server's warm-up round at base load: {time.perf_counter() - start:.3f} s", flush=True)

    batch_generation.warm_up = timed_warm_up
    work = Path(tempfile.mkdtemp(prefix="serve-ttft-"))
    stack = contextlib.ExitStack()
    try:
        base, source = resolve_model(args, work)
        paths = make_adapters(base, work, count=6)
        print(f"model: {source}; device {args.device}; torch {torch.__version__}", flush=True)
        for kind in args.variants:
            stack.close()
            if kind == "before":
                stack.enter_context(server_before_session7())
            versions = [version(i + 1, guild=min(i, 3) if i < 4 else 0, adapter=p, base=base)
                        for i, p in enumerate(paths)]
            server = LocalServer(str(base), device=args.device, max_loaded_adapters=6, max_batch_size=64,
                                 max_queue_wait_s=3600)
            try:
                t = time.perf_counter()
                for v in versions[:4]:
                    await server.publish(v)
                print(f"[{kind}] 4 adapters published in {time.perf_counter() - t:.2f} s", flush=True)
                names = [adapter_name(v) for v in versions[:4]]
                if "shapes" in args.parts:
                    print(f"[{kind}] shapes ({args.steps} tokens a round):", flush=True)
                    await server._on_worker(shapes, server, names, lambda: server._ensure_adapter(versions[4]),
                                            args.steps)
                    await server.remove(versions[4])
                if "profile" in args.parts:
                    print(f"[{kind}] profile of a warm 4-row, 4-adapter round (prefill + 1 step):", flush=True)
                    await server._on_worker(profile, server, names, 70)
                if "trace" in args.parts:
                    print(f"[{kind}] trace of serve_concurrency's levels ({args.tokens} tokens an answer):", flush=True)
                    await trace(server, versions, args.levels, args.tokens)
            finally:
                await server.close()
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="embedded:gemma-3-270m", help="as in bench/serve_concurrency.py")
    parser.add_argument("--models-dir")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--parts", default="shapes,profile,trace")
    parser.add_argument("--variants", default="after", help="after, before or both (comma-separated)")
    parser.add_argument("--steps", type=int, default=8, help="tokens per round in the shapes part")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer in the trace part")
    parser.add_argument("--levels", default="1,4,16,64")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.variants = [m.strip() for m in args.variants.split(",") if m.strip()]
    if not args.variants or any(v not in ("after", "before") for v in args.variants):
        parser.error("--variants: after, before or both")
    args.levels = [int(x) for x in args.levels.split(",")]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
