"""Concurrent /ask against the in-process server: batched rounds vs one question at a time.

N questions (1, 4, 16; 64 too on a GPU) are asked at the same moment of a LocalServer, spread
over min(N, 4) guilds, each guild answering from its own LoRA adapter (r=16, alpha=32, all
linear layers, like the trainer's defaults). While they decode, guild 1 is swapped to a new
version (publish, pointer flip, removal of the old one), as the trainer does. Each level runs in
three modes of the same server code, in this order, on the same model in one process:
  sequential  batching="off": one question at a time (the server before batching: the baseline)
  mixed       batching="mixed": every waiting question in one round, adapters mixed per row
  grouped     batching="grouped": one round per adapter
  mixed_peft  (only if asked for) "mixed" as the server was before session 7: rounds of several
              adapters through PEFT's own `adapter_names`, and cuDNN attention allowed
Per level and mode: aggregate generated tokens/s (tokens of every answer / wall time from the
first ask to the last token), p50/p95 time to first token and to the full answer, errors; and
the ratios against the sequential baseline and against one question alone. Answers are greedy
by default, so every mode produces the same tokens and the ratios compare speed only.

Results go to --out (bench/results/serve_concurrency.json) under "cpu" or "gpu", keeping the
other device's figures already in the file.

Usage:
  PYTHONPATH=. python bench/serve_concurrency.py                      # CPU, the embedded Gemma 3 270M
  PYTHONPATH=. python bench/serve_concurrency.py --device cuda --out FILE.json
  --model DIR: a Hugging Face folder instead of the embedded model; if it has no weights
  (only config.json and the tokenizer files, e.g. a copy of data/models/gemma-3-270m without
  model.safetensors), random weights of that shape are used (same speed as trained ones).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

QUESTIONS = [
    "When is the next raid, and what should I bring?",
    "What are the rules about posting memes in the general channel?",
    "How do I get the artist role on this server?",
    "Can you explain what the weekly challenge is about?",
    "Who should I ask if my account was muted by mistake?",
    "What is the guild's motto and where does it come from?",
    "Is there a voice channel for people who just want to listen to music?",
    "How many points do I need for the veteran badge?",
]
MODES = ("sequential", "mixed", "grouped")
EXTRA_MODES = ("mixed_peft",)
BATCHING = {"sequential": "off", "mixed": "mixed", "grouped": "grouped", "mixed_peft": "mixed"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def resolve_model(args, work: Path) -> tuple[Path, str]:
    """The base model folder to serve, and how it was obtained."""
    spec = args.model
    if spec.startswith("embedded:"):
        models_dir = args.models_dir or os.environ.get("GUILDTUNE_MODELS_DIR") or str(REPO / "data" / "models")
        try:
            from trainer.base_model import resolve_base_model

            folder = Path(resolve_base_model(spec, models_dir))
        except Exception as exc:  # the GGUF package or its dependencies are not on this machine
            raise SystemExit(
                f"The embedded model {spec} is not available here ({type(exc).__name__}: {exc}). Pass "
                "--model DIR, where DIR holds config.json and the tokenizer files of the Gemma 3 270M (a copy "
                "of data/models/gemma-3-270m without model.safetensors is enough: random weights of that "
                "shape are used), or --models-dir where the embedded model is cached."
            ) from None
        return (folder, f"{spec} ({folder})") if not args.random_init else (random_copy(folder, work, args), "")
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--model {folder} has no config.json: point it at a Hugging Face model folder.")
    if args.random_init or not any((folder / name).is_file() for name in WEIGHT_FILES):
        return random_copy(folder, work, args), f"random init of {folder}'s config"
    return folder, str(folder)


def random_copy(folder: Path, work: Path, args) -> Path:
    """Config and tokenizer of `folder` with freshly initialised weights, saved under `work`.

    The special tokens' embedding rows are zeroed (tied: their logits are 0, below the best random
    one), so the random model never picks a control token. Why: answers skip those tokens' text, and
    a random row that repeats one streams nothing for dozens of steps, which the time to first text
    would count although the server sent a token every step; a trained model starts with text.
    Same shapes, same kernels: the speed is the real model's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = work / "random-base"
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(*WEIGHT_FILES, "*.safetensors"))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(out)
    special = sorted({i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids))
    with torch.no_grad():
        model.get_input_embeddings().weight[special] = 0
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.weight[special] = 0
    model.save_pretrained(out)
    return out


def make_adapters(base: Path, work: Path, count: int) -> list[Path]:
    """`count` LoRA adapters of the trainer's default shape (B starts at zero, as PEFT initialises
    it: the same compute as a trained adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    paths = []
    for index in range(count):
        path = work / f"adapter{index}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


def version(number: int, guild: int, adapter: Path, base: Path):
    from storage.records import ModelVersion

    return ModelVersion(id=1000 + number, guild_id=guild, number=number, run_id=None, tag=None,
                        adapter_path=str(adapter), base_model=str(base), metrics={}, status="ready",
                        n_examples=0, created_at=time.time())


async def one_level(server, tokenizer, active: dict, spare: list, n: int, options) -> dict:
    """Ask n questions at once (guilds 0..min(n,4)-1), swap guild 0 mid-run; the figures."""
    from storage.records import GuildSettings
    from serving.prompting import guild_messages

    guilds = min(n, 4)
    system = GuildSettings(guild_id=0)
    first_token = asyncio.Event()
    swap_error: list[str] = []

    async def ask(i: int) -> tuple[float | None, float, int]:
        guild = i % guilds
        messages = guild_messages(system, QUESTIONS[i % len(QUESTIONS)])
        t0 = time.perf_counter()
        ttft = None
        pieces = []
        async for piece in server.chat(active[guild], messages, options):
            if ttft is None:
                ttft = time.perf_counter() - t0
                first_token.set()
            pieces.append(piece)
        return ttft, time.perf_counter() - t0, len(tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])

    async def swap() -> None:
        await first_token.wait()
        old, new = active[0], spare.pop()
        try:
            await server.publish(new)
            active[0] = new  # the pointer flip: later questions of guild 0 go to the new version
            await server.remove(old)
            spare.insert(0, old)
        except Exception as exc:  # reported as an error of this run
            swap_error.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    swapper = asyncio.create_task(swap())
    results = await asyncio.gather(*(ask(i) for i in range(n)), return_exceptions=True)
    wall = time.perf_counter() - started
    first_token.set()
    await swapper
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)] + swap_error
    ttfts = [r[0] for r in ok if r[0] is not None] or [wall]
    answers = [r[1] for r in ok] or [wall]
    tokens = sum(r[2] for r in ok)
    return {"questions": n, "guilds": guilds, "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": round(percentile(ttfts, 50), 3), "ttft_p95_s": round(percentile(ttfts, 95), 3),
            "answer_p50_s": round(percentile(answers, 50), 3), "answer_p95_s": round(percentile(answers, 95), 3),
            "errors": len(errors), "error_messages": errors[:5]}


@contextlib.contextmanager
def server_before_session7():
    """Mixed rounds through PEFT's adapter_names, attention free to use cuDNN and no warm-up round
    at base load, as before session 7."""
    from serving import batch_generation, generation

    saved = batch_generation.stacked_lora_plan, generation.decoding_attention, generation.warms_up
    batch_generation.stacked_lora_plan = lambda model, names: None
    generation.decoding_attention = lambda device: contextlib.nullcontext()
    generation.warms_up = lambda device: False
    try:
        yield
    finally:
        batch_generation.stacked_lora_plan, generation.decoding_attention, generation.warms_up = saved


async def run_mode(mode: str, base: Path, adapters: list[Path], args, options) -> dict[int, dict]:
    if mode == "mixed_peft":
        with server_before_session7():
            return await run_mode_as_is(mode, base, adapters, args, options)
    return await run_mode_as_is(mode, base, adapters, args, options)


async def run_mode_as_is(mode: str, base: Path, adapters: list[Path], args, options) -> dict[int, dict]:
    from transformers import AutoTokenizer

    from serving.local_server import LocalServer

    tokenizer = AutoTokenizer.from_pretrained(base)
    versions = [version(i + 1, guild=min(i, 3) if i < 4 else 0, adapter=path, base=base)
                for i, path in enumerate(adapters)]
    active = {g: versions[g] for g in range(4)}
    spare = versions[4:]  # guild 0's next versions, published mid-run
    server = LocalServer(str(base), device=args.device, batching=BATCHING[mode], max_batch_size=max(args.levels),
                         max_loaded_adapters=len(adapters), max_queue_wait_s=3600)
    try:
        for v in versions[:4]:
            await server.publish(v)
        warm = options.__class__(temperature=0, max_tokens=4, timeout_s=options.timeout_s)
        for v in versions[:4]:  # first calls are slow (allocations, CUDA kernels): not measured
            async for _ in server.chat(v, [{"role": "user", "content": "Hello"}], warm):
                pass
        out = {}
        levels = args.levels if mode not in ("sequential", "grouped") or not args.baseline_levels \
            else [n for n in args.levels if n in args.baseline_levels]
        for n in levels:
            out[n] = await one_level(server, tokenizer, active, spare, n, options)
            fig = out[n]
            print(f"  {mode:10s} {n:3d} questions: {fig['tokens_per_s']:8.1f} tok/s  ttft p50 {fig['ttft_p50_s']:.2f} "
                  f"p95 {fig['ttft_p95_s']:.2f} s  answer p50 {fig['answer_p50_s']:.2f} p95 {fig['answer_p95_s']:.2f} s  "
                  f"errors {fig['errors']}", flush=True)
        return out
    finally:
        await server.close()


def summarize(by_mode: dict[str, dict[int, dict]], levels: list[int]) -> dict:
    """Top-level figures per level are the default mode's (mixed), with the others and the ratios beside."""
    main = by_mode.get("mixed") or next(iter(by_mode.values()))
    alone = main[levels[0]]["tokens_per_s"] if levels[0] == 1 else None
    out = {}
    for n in levels:
        entry = dict(main[n])
        for mode, figures in by_mode.items():
            if figures is not main and n in figures:
                entry[mode] = figures[n]
        if n in by_mode.get("sequential", {}) and by_mode["sequential"][n]["tokens_per_s"] > 0:
            seq = by_mode["sequential"][n]["tokens_per_s"]
            entry["ratio_vs_sequential"] = round(entry["tokens_per_s"] / seq, 2)
            if n in by_mode.get("grouped", {}) and main is not by_mode["grouped"]:
                entry["grouped_ratio_vs_sequential"] = round(by_mode["grouped"][n]["tokens_per_s"] / seq, 2)
        if "mixed_peft" in by_mode and main is not by_mode["mixed_peft"] and by_mode["mixed_peft"][n]["tokens_per_s"] > 0:
            entry["ratio_vs_mixed_peft"] = round(entry["tokens_per_s"] / by_mode["mixed_peft"][n]["tokens_per_s"], 2)
        if alone:
            entry["ratio_vs_one_alone"] = round(entry["tokens_per_s"] / alone, 2)
        out[str(n)] = entry
    return out


async def main(args) -> dict:
    import torch
    from serving.protocol import GenerationOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="serve-concurrency-"))
    try:
        base, source = resolve_model(args, work)
        print(f"model: {source}; device {args.device}; torch {torch.__version__} ({torch.get_num_threads()} CPU threads); "
              f"{args.max_tokens} tokens per answer; levels {args.levels}", flush=True)
        adapters = make_adapters(base, work, count=6)  # 4 guilds + guild 0's next versions
        options = GenerationOptions(temperature=args.temperature, max_tokens=args.max_tokens, timeout_s=600)
        by_mode = {}
        for mode in args.modes:
            by_mode[mode] = await run_mode(mode, base, adapters, args, options)
        result = {"model": source, "device": args.device, "max_tokens": args.max_tokens,
                  "cpu_threads": torch.get_num_threads(), "load_average_at_start": load_at_start,
                  "temperature": args.temperature, "modes": list(args.modes), **summarize(by_mode, args.levels)}
        if args.device.startswith("cuda"):
            result["gpu_name"] = torch.cuda.get_device_name(0)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict, levels: list[int]) -> None:
    print("\nlevel  mixed tok/s  sequential tok/s  ratio  grouped ratio  vs one alone  ttft p95  before-7 tok/s  ttft p95"
          "  errors")
    for n in levels:
        e = result[str(n)]
        seq = e.get("sequential", {}).get("tokens_per_s", float("nan"))
        before = e.get("mixed_peft", {})
        print(f"{n:5d}  {e['tokens_per_s']:11.1f}  {seq:16.1f}  {e.get('ratio_vs_sequential', float('nan')):5.2f}  "
              f"{e.get('grouped_ratio_vs_sequential', float('nan')):13.2f}  {e.get('ratio_vs_one_alone', float('nan')):12.2f}"
              f"  {e['ttft_p95_s']:7.2f}s  {before.get('tokens_per_s', float('nan')):14.1f}  "
              f"{before.get('ttft_p95_s', float('nan')):7.2f}s"
              f"  {e['errors'] + sum(e.get(m, {}).get('errors', 0) for m in MODES + EXTRA_MODES)}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--model", default="embedded:gemma-3-270m",
                        help="embedded:gemma-3-270m (default) or a Hugging Face folder (weights optional)")
    parser.add_argument("--models-dir", help="where the embedded model is cached (default GUILDTUNE_MODELS_DIR "
                                             "or data/models)")
    parser.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    parser.add_argument("--levels", help="comma-separated question counts (default 1,4,16; cuda: 1,4,16,64)")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES + EXTRA_MODES))
    parser.add_argument("--baseline-levels", help="levels at which sequential and grouped run (default: all)")
    parser.add_argument("--max-tokens", type=int, help="answer length (default 48 on cpu, 256 on cuda)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_concurrency.json")
    args = parser.parse_args(argv)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device {args.device}: use cpu or cuda")
    gpu = args.device.startswith("cuda")
    args.levels = [int(x) for x in (args.levels or ("1,4,16,64" if gpu else "1,4,16")).split(",")]
    args.baseline_levels = [int(x) for x in args.baseline_levels.split(",")] if args.baseline_levels else None
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES + EXTRA_MODES]
    if unknown or not args.modes:
        parser.error(f"--modes {','.join(unknown) or '(empty)'}: choose from {','.join(MODES + EXTRA_MODES)}")
    args.max_tokens = args.max_tokens or (256 if gpu else 48)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    figures = asyncio.run(main(arguments))
    report(figures, arguments.levels)
    key = "gpu" if arguments.device.startswith("cuda") else "cpu"
    previous = json.loads(arguments.out.read_text()) if arguments.out.is_file() else {}
    previous[key] = figures
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {arguments.out} [{key}]")
