#!/usr/bin/env python3
"""Training throughput of the project's own trainer, on the anchors' shape and data (issue 7).

Runs `trainer.sft.prepare_trainer(...).trainer.train()` — the path `guildtune train` takes — on
the anchorbench workload: random-init Llama-3.2-1B shape, 2,000 synthetic conversations
(lognormal lengths, median 250, mean 330, max 1024; Zipf content ids; the anchors' seed and
generator, imported from anchorbench/bench.py), LoRA r=16/alpha=16 on all 7 linear kinds, lr 2e-4
linear with 5 warm-up steps, 65 optimizer steps of which 6..65 are timed, loss on every token.
Tokens and timing are measured exactly like the anchors (non-padding tokens of every micro-batch
that reaches `training_step`; CUDA synchronised at each step end; peak allocated memory over
training, counter reset at train begin).

Variants (each in its own process: liger patches classes globally):
  project         TrainConfig defaults for this GPU (trainer/plan.py decides everything)
  project_capped  the same with memory_cap_gib (--cap-gib) — the small-card mode
  project_qlora   qlora="on" (bnb nf4, double quant, bf16 compute)
  baseline_A      the seeds' way through the same code: batch 8 padded to the longest, no packing,
                  gradient checkpointing, adamw_torch, sdpa, no liger

Sub-commands
  run --variant V --model-dir DIR --out FILE.json [--tiny] [--scaling strong|weak]
  check-flash --out FILE.json         flash varlen vs reference attention, forward and backward (GPU)
  all --model-dir DIR --out-dir DIR [--variants ...] [--anchor-results anchorbench_out/results.json]
  summarize --runs-dir DIR --out FILE.json [--anchor-results FILE]
  multigpu --gpus N --model-dir DIR [--variants ...] [--scaling strong|weak] [--device cpu]
                                      each variant on 1 GPU, then on 2, 4, ... N (same invocation), every
                                      run through trainer/launch.py's launcher (accelerate launch, DDP);
                                      tokens/s total and per GPU, scaling efficiency = tok/s(N) / (N x
                                      tok/s(1)), peak memory per GPU, loss curve ->
                                      bench/results/train_throughput_multigpu.json. `--gpus 1` runs the
                                      same code on one GPU; `--device cpu --tiny --gpus 2` is the CPU
                                      smoke test (gloo).
  Scaling: strong (default, what `guildtune train` does) keeps the global batch of 8 conversations
  and splits it over the GPUs; weak keeps 8 per GPU (the global batch grows with N).

Example (device call, after `bash anchorbench/run.sh C_padded C_packed C_q4` built /tmp/anchor_model):
  PYTHONPATH=/tmp/site:$PWD python3 bench/train_throughput.py all --model-dir /tmp/anchor_model \\
      --out-dir $OUT/project --anchor-results $OUT/results.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VARIANTS = ("project", "project_capped", "project_qlora", "baseline_A")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def anchor_module():
    """anchorbench/bench.py (data generator, model shape, tokenizer): the anchors' exact workload."""
    path = Path(os.environ.get("ANCHORBENCH_DIR", REPO / "anchorbench"))
    if not (path / "bench.py").is_file():
        raise SystemExit("anchorbench/ is missing: cp -r ../shared/anchorbench ./anchorbench (see bench/RESULTS.md)")
    sys.path.insert(0, str(path))
    import bench as anchor  # noqa: E402

    return anchor


def _overrides(variant: str) -> tuple[str, dict]:
    """`project@liger=off@gradient_checkpointing=on` -> ("project", {...}): one-off experiments."""
    name, *sets = variant.split("@")
    out = {}
    for item in sets:
        k, _, v = item.partition("=")
        out[k] = float(v) if k == "memory_cap_gib" else v
    return name, out


def train_config(variant: str, a):
    from trainer.config import TrainConfig

    variant, extra = _overrides(variant)

    common = dict(lora_r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES, learning_rate=2e-4,
                  lr_scheduler_type="linear", warmup_ratio=a.warmup / (a.warmup + a.steps), weight_decay=0.0,
                  per_device_batch_size=8, max_length=a.max_len, max_steps=a.warmup + a.steps, seed=42,
                  logging_steps=1, device="cuda" if not a.tiny else "auto")
    if getattr(a, "device", None):
        common["device"] = a.device
    # The workload's 2,000 conversations are a 250-step run, where compile="auto" compiles
    # (trainer/plan.py COMPILE_MIN_STEPS); the bench times 60 of those steps, so it says so itself.
    if variant == "project":
        kw = dict(compile="on")
    elif variant == "project_capped":  # bf16 LoRA under the cap (QLoRA is its own variant)
        kw = dict(memory_cap_gib=a.cap_gib, qlora="off", compile="on")
    elif variant == "project_qlora":  # the small-card mode: 4-bit base under Unsloth QLoRA's peak
        kw = dict(qlora="on", memory_cap_gib=a.qlora_cap_gib, compile="on")
    elif variant == "baseline_A":
        kw = dict(packing="off", gradient_checkpointing="on", optim="adamw_torch", attn_implementation="sdpa",
                  liger="off", qlora="off")
    else:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    cfg = TrainConfig(**common, **{**kw, **extra})
    if getattr(a, "scaling", "strong") == "weak":  # 8 conversations per GPU (prepare_trainer keeps it as it is)
        from trainer.distributed import current

        cfg = cfg.with_overrides(num_processes=current().world_size)
    return cfg


def _profiler_callback(out_path: str, first: int, last: int):
    """Profile optimizer steps first..last (CPU + CUDA) and write the top ops table."""
    import torch
    from transformers import TrainerCallback

    class Prof(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 == first:
                torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if self.prof is not None and state.global_step == last:
                torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                ka = self.prof.key_averages()
                with open(out_path, "w") as f:
                    f.write(ka.table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70))
                    f.write("\n\n")
                    f.write(ka.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
                self.prof = None

    return Prof()


def cmd_run(a) -> None:
    from trainer.distributed import current

    res: dict = {"variant": a.variant, "status": "started", "argv": sys.argv[1:]}
    t_start = time.time()

    def dump():
        if not current().is_main:  # in a multi-GPU run rank 0 writes the figures of every rank
            return
        res["wall_s"] = round(time.time() - t_start, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))

    try:
        _run(a, res, dump)
        res["status"] = "ok"
    except BaseException as e:  # noqa: BLE001 - record, then re-raise
        res.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-6000:])
        dump()
        raise
    dump()
    if not current().is_main:
        return
    th, mem = res["throughput"], res.get("memory", {})
    print("RESULT", json.dumps({"variant": a.variant, "tokens_per_s": round(th["tokens_per_s"]),
                                "tokens_per_s_median": round(th["tokens_per_s_at_median_step"]),
                                "peak_gib": mem.get("peak_alloc_gib"), "loss_first": res["loss"]["first"],
                                "loss_last": res["loss"]["last"]}), flush=True)


def _run(a, res, dump) -> None:
    import torch
    from datasets import Dataset

    from trainer.sft import prepare_trainer

    anchor = anchor_module()
    cuda = torch.cuda.is_available()
    res["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    res["versions"] = anchor.versions(["torch", "transformers", "trl", "peft", "accelerate", "datasets",
                                       "liger-kernel", "bitsandbytes", "triton"])
    rows = anchor.make_rows(a.n_conv, a.seed, a.median_len, a.sigma, a.min_len, a.max_len)
    res["data"] = anchor.data_stats(rows)
    print("DATA", json.dumps(res["data"]), flush=True)
    cfg = train_config(a.variant, a)
    res["config"] = cfg.to_dict()
    dump()

    meter = anchor.Meter(a.warmup, a.steps, cuda)
    mem: dict = {}
    t0 = time.time()
    prepared = prepare_trainer(a.model_dir, Dataset.from_dict({"input_ids": rows}), cfg,
                               Path(a.work_dir) / a.variant.replace("@", "_"),
                               callbacks=[anchor.make_callback(meter, mem)]
                               + ([_profiler_callback(a.profile, 20, 22)] if a.profile and cuda else []))
    res["prepare_s"] = round(time.time() - t0, 1)
    trainer = prepared.trainer
    anchor.wrap_training_step(trainer, meter)
    res["plan"] = prepared.plan.to_dict()
    res["effective"] = dict(
        collator=type(trainer.data_collator).__name__,
        attn_implementation=trainer.model.config._attn_implementation,
        gradient_checkpointing=trainer.args.gradient_checkpointing,
        use_liger_kernel=trainer.args.use_liger_kernel, optim=str(trainer.args.optim),
        packing=trainer.args.packing, padding_free=trainer.args.padding_free,
        train_rows=len(trainer.train_dataset), per_device_train_batch_size=trainer.args.per_device_train_batch_size,
        max_length=trainer.args.max_length)
    print("EFFECTIVE", json.dumps(res["effective"]), "REASONS", json.dumps(prepared.plan.reasons), flush=True)
    res["status"] = "training"
    dump()
    t1 = time.time()
    trainer.train()
    res["train_s"] = round(time.time() - t1, 1)
    res["throughput"] = meter.result()
    if not res["throughput"].get("complete"):
        raise RuntimeError(f"timing incomplete: {res['throughput']}")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]  # gathered over the ranks
    res["loss"] = dict(first=losses[0] if losses else None, last=losses[-1] if losses else None,
                       n=len(losses), all=[round(x, 4) for x in losses])
    if cuda:
        gib = 2**30
        peak = torch.cuda.max_memory_allocated()
        res["memory"] = dict(peak_alloc_gib=round(max(peak, mem.get("peak_before_train", 0)) / gib, 3),
                             peak_alloc_train_gib=round(peak / gib, 3),
                             peak_reserved_train_gib=round(torch.cuda.max_memory_reserved() / gib, 3),
                             alloc_at_train_begin_gib=round(mem.get("before_train_alloc", 0) / gib, 3),
                             estimate_gib=prepared.plan.estimate_gib)
    res["ranks"] = _gather_ranks(res["throughput"], res.get("memory", {}))
    res["throughput_total"] = _total(res["ranks"])
    split = cfg.for_processes(len(res["ranks"]))
    res["global_batch"] = split.per_device_batch_size * split.gradient_accumulation_steps * split.num_processes


def _gather_ranks(throughput: dict, memory: dict) -> list[dict]:
    """Every rank's timed tokens, seconds and peak memory, on every rank (one process: a list of one)."""
    import torch.distributed as dist

    mine = dict(tokens=throughput["tokens"], seconds=throughput["seconds"],
                tokens_per_s=throughput["tokens_per_s"], peak_alloc_gib=memory.get("peak_alloc_gib"))
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def _total(ranks: list[dict]) -> dict:
    """The job's throughput: all ranks' tokens over the slowest rank's timed window."""
    tokens, seconds = sum(r["tokens"] for r in ranks), max(r["seconds"] for r in ranks)
    return dict(gpus=len(ranks), tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds,
                tokens_per_s_per_gpu=tokens / seconds / len(ranks),
                peak_alloc_gib_per_gpu=[r["peak_alloc_gib"] for r in ranks])


def cmd_check_flash(a) -> None:
    """Flash varlen kernel vs the masked reference: outputs and gradients, GQA, sliding window."""
    import torch

    from trainer.packing import _FlashVarlen, reference_varlen

    out = {"device": torch.cuda.get_device_name(0), "cases": []}
    torch.manual_seed(0)
    for hq, hkv, d, window, empty in [(32, 8, 64, None, 0), (4, 1, 256, None, 0), (4, 1, 256, 512, 0),
                                       (32, 8, 64, None, 10)]:
        lens = [700, 1, 250, 1024, 330, 383] + [0] * empty  # a 1-token segment; empty ones (compiled padding)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
        total = int(cu[-1])
        q, k, v = (torch.randn(total, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for h in (hq, hkv, hkv))
        g = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
        o = _FlashVarlen.apply(q, k, v, cu, max(lens) if not empty else 2688, d ** -0.5,
                               (window - 1) if window else -1)
        grads = torch.autograd.grad(o, (q, k, v), g)
        q32, k32, v32 = (t.detach().double().requires_grad_() for t in (q, k, v))
        r = reference_varlen(q32, k32, v32, cu, d ** -0.5, sliding_window=window)
        rgrads = torch.autograd.grad(r, (q32, k32, v32), g.double())

        def rel(x, y):
            return float((x.detach().double() - y.detach()).norm() / y.detach().norm())

        case = dict(hq=hq, hkv=hkv, d=d, window=window, empty_segments=empty, out_rel=rel(o, r),
                    grad_rel=[rel(x, y) for x, y in zip(grads, rgrads)])
        case["ok"] = case["out_rel"] < 1e-2 and max(case["grad_rel"]) < 2e-2
        out["cases"].append(case)
        print("CHECK_FLASH", json.dumps(case), flush=True)
    out["ok"] = all(c["ok"] for c in out["cases"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    if not out["ok"]:
        raise SystemExit("flash varlen disagrees with the reference")


def cmd_all(a) -> None:
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    for v in a.variants.split():
        stem = v.replace("@", "__").replace("=", "-")
        cmd = [sys.executable, __file__, "run", "--variant", v, "--model-dir", a.model_dir,
               "--out", str(out_dir / f"{stem}.json"), "--cap-gib", str(a.cap_gib),
               "--qlora-cap-gib", str(a.qlora_cap_gib)] + (["--tiny"] if a.tiny else [])
        if a.profile and v == a.profile:
            cmd += ["--profile", str(out_dir / f"profile_{stem}.txt")]
        t = time.time()
        with open(out_dir / f"{stem}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=a.run_cap_s).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        lines = (out_dir / f"{stem}.log").read_text(errors="replace").splitlines()
        cmd_summarize(argparse.Namespace(runs_dir=str(out_dir), out=str(out_dir / "train_throughput.json"),
                                         anchor_results=a.anchor_results, quiet=True))
        print(f"[{v}] rc={rc} {time.time() - t:.0f}s", *[ln for ln in lines if ln.startswith(("RESULT", "EFFECTIVE"))],
              *(lines[-15:] if rc != 0 else []), sep="\n  ", flush=True)
    cmd_summarize(argparse.Namespace(runs_dir=str(out_dir), out=str(out_dir / "train_throughput.json"),
                                     anchor_results=a.anchor_results))


def _figures(r: dict) -> dict:
    th, mem = r.get("throughput") or {}, r.get("memory") or {}
    return dict(status=r.get("status"), tokens_per_s=th.get("tokens_per_s"),
                tokens_per_s_median=th.get("tokens_per_s_at_median_step"), peak_gib=mem.get("peak_alloc_gib"),
                tokens_per_step=th.get("tokens_per_step"), padding_fraction=th.get("padding_fraction"),
                loss_first=(r.get("loss") or {}).get("first"), loss_last=(r.get("loss") or {}).get("last"),
                device=r.get("device"))


def cmd_summarize(a) -> None:
    runs = Path(a.runs_dir)
    result: dict = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": None}
    for p in sorted(runs.glob("*.json")):
        if p.stem not in VARIANTS and "__" not in p.stem:
            continue
        r = json.loads(p.read_text())
        key = p.stem if p.stem in VARIANTS else "experiment_" + p.stem
        result[key] = _figures(r) | {"speed": r.get("speed", r.get("plan")), "effective": r.get("effective")}
        result["device"] = result["device"] or r.get("device")
    if a.anchor_results and Path(a.anchor_results).is_file():
        for r in json.loads(Path(a.anchor_results).read_text()).get("results", []):
            if str(r.get("variant", "")).startswith("C"):
                result[f"unsloth_{r['variant']}"] = _figures(r)
    base = (result.get("baseline_A") or {}).get("tokens_per_s")
    unsloth = {k: v for k, v in result.items() if k.startswith("unsloth_") and v.get("status") == "ok"}
    best16 = {k: v for k, v in unsloth.items() if k != "unsloth_C_q4"}
    ratios = {}
    for v in ("project", "project_capped", "project_qlora"):
        f = result.get(v)
        if not f or f.get("status") != "ok":
            continue
        if base:
            ratios[f"{v}/baseline_A"] = f["tokens_per_s"] / base
        ref = unsloth.get("unsloth_C_q4") if v == "project_qlora" else None
        if v != "project_qlora" and best16:
            best_mean = max(best16.values(), key=lambda x: x["tokens_per_s"])
            best_med = max(best16.values(), key=lambda x: x["tokens_per_s_median"])
            ratios[f"{v}/best_unsloth_mean"] = f["tokens_per_s"] / best_mean["tokens_per_s"]
            ratios[f"{v}/best_unsloth_median"] = f["tokens_per_s_median"] / best_med["tokens_per_s_median"]
        if ref:
            ratios[f"{v}/unsloth_q4_mean"] = f["tokens_per_s"] / ref["tokens_per_s"]
            ratios[f"{v}/unsloth_q4_median"] = f["tokens_per_s_median"] / ref["tokens_per_s_median"]
            ratios[f"{v}/unsloth_q4_peak"] = f["peak_gib"] / ref["peak_gib"]
    result["ratios"] = {k: round(x, 3) for k, x in ratios.items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    if getattr(a, "quiet", False):
        return
    print(f"\ntrain_throughput ({result['device']}); tok/s = non-padding tokens per second over the timed steps")
    print(f"{'variant':<22} {'status':<7} {'tok/s':>8} {'tok/s@med':>10} {'peak GiB':>9} {'loss first':>10} "
          f"{'loss last':>9}")
    for k, f in result.items():
        if isinstance(f, dict) and "tokens_per_s" in f:
            fmt = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) else "-"  # noqa: E731
            print(f"{k:<22} {str(f['status']):<7} {fmt(f['tokens_per_s'], '8.0f')} "
                  f"{fmt(f['tokens_per_s_median'], '10.0f')} {fmt(f['peak_gib'], '9.2f')} "
                  f"{fmt(f['loss_first'], '10.3f')} {fmt(f['loss_last'], '9.3f')}")
    for k, x in result["ratios"].items():
        print(f"  {k:<40} {x:.2f}")


def gpu_counts(n: int) -> list[int]:
    """1, then the powers of two below n, then n: the 1-GPU baseline comes first, in the same invocation."""
    counts, g = [1], 2
    while g < n:
        counts.append(g)
        g *= 2
    return counts + ([n] if n > 1 else [])


def shape_name(model_dir: str) -> str:
    from transformers import AutoConfig

    from trainer.estimate import model_shape

    config = AutoConfig.from_pretrained(model_dir)
    return f"{config.model_type}-{model_shape(config).n_params / 1e9:.2f}B"


def cmd_multigpu(a) -> None:
    """Each variant on 1 GPU, then 2, 4, ... N, through the job's own launcher; scaling against the 1-GPU run."""
    from trainer.launch import LaunchPlan

    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    shape = shape_name(a.model_dir)
    summary: dict = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": None, "shape": shape,
                     "scaling": a.scaling, "gpus": a.gpus, "results": []}
    for variant in a.variants.split():
        baseline = None
        for g in gpu_counts(a.gpus):
            stem = f"{variant.replace('@', '__').replace('=', '-')}__gpus{g}"
            target = [__file__, "run", "--variant", variant, "--model-dir", a.model_dir,
                      "--out", str(out_dir / f"{stem}.json"), "--scaling", a.scaling,
                      "--cap-gib", str(a.cap_gib), "--qlora-cap-gib", str(a.qlora_cap_gib)]
            target += (["--tiny"] if a.tiny else []) + (["--device", a.device] if a.device else [])
            argv = LaunchPlan(g, a.strategy if g > 1 else "single", a.device or "cuda").argv(target)
            t = time.time()
            with open(out_dir / f"{stem}.log", "w") as log:
                try:
                    rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        timeout=a.run_cap_s).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            path = out_dir / f"{stem}.json"
            r = json.loads(path.read_text()) if path.is_file() else {"status": "missing"}
            total = r.get("throughput_total") or {}
            row = dict(shape=shape, mode=variant, gpus=g, strategy=a.strategy if g > 1 else "single",
                       status=r.get("status") if rc == 0 else f"rc={rc}", device=r.get("device"),
                       global_batch=r.get("global_batch"), tokens_per_s=total.get("tokens_per_s"),
                       tokens_per_s_per_gpu=total.get("tokens_per_s_per_gpu"),
                       peak_alloc_gib_per_gpu=total.get("peak_alloc_gib_per_gpu"),
                       loss=(r.get("loss") or {}).get("all"), wall_s=round(time.time() - t, 1))
            if g == 1 and row["tokens_per_s"]:
                baseline = row["tokens_per_s"]
            row["scaling_efficiency"] = (round(row["tokens_per_s"] / (g * baseline), 3)
                                         if baseline and row["tokens_per_s"] else None)
            summary["results"].append(row)
            summary["device"] = summary["device"] or r.get("device")
            if rc != 0:
                lines = (out_dir / f"{stem}.log").read_text(errors="replace").splitlines()
                print(f"[{stem}] rc={rc}", *lines[-15:], sep="\n  ", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1, default=str))
    fmt = lambda x, spec: format(x, spec) if isinstance(x, (int, float)) else "-"  # noqa: E731
    print(f"\ntrain_throughput multi-GPU ({summary['device']}, {shape}, {a.scaling} scaling); "
          "tok/s = non-padding tokens per second over the timed steps, all GPUs")
    print(f"{'mode':<16} {'gpus':>4} {'status':<8} {'tok/s':>9} {'tok/s/GPU':>10} {'efficiency':>10} "
          f"{'peak GiB/GPU':>14} {'loss first':>10} {'loss last':>9}")
    for row in summary["results"]:
        peaks = row["peak_alloc_gib_per_gpu"] or []
        peak = max((p for p in peaks if p is not None), default=None)
        loss = row["loss"] or [None]
        print(f"{row['mode']:<16} {row['gpus']:>4} {str(row['status']):<8} {fmt(row['tokens_per_s'], '9.0f')} "
              f"{fmt(row['tokens_per_s_per_gpu'], '10.0f')} {fmt(row['scaling_efficiency'], '10.2f')} "
              f"{fmt(peak, '14.2f')} {fmt(loss[0], '10.3f')} {fmt(loss[-1], '9.3f')}")
    print(f"wrote {a.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "all", "multigpu"):
        r = sub.add_parser(name)
        r.add_argument("--model-dir", required=True)
        r.add_argument("--tiny", action="store_true", help="CPU smoke test: few short rows, few steps")
        r.add_argument("--cap-gib", type=float, default=3.6, help="memory cap of project_capped")
        r.add_argument("--qlora-cap-gib", type=float, default=1.68, help="memory cap of project_qlora")
        if name in ("run", "multigpu"):
            r.add_argument("--scaling", choices=("strong", "weak"), default="strong",
                           help="strong: the global batch of 8 split over the GPUs; weak: 8 per GPU")
            r.add_argument("--device", choices=("cpu", "cuda"), default=None,
                           help="train on this device (cpu: the gloo smoke test); default cuda (auto with --tiny)")
        if name == "multigpu":
            r.add_argument("--gpus", type=int, required=True, help="the most GPUs; runs 1, 2, 4, ... up to it")
            r.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
            r.add_argument("--variants", default="project")
            r.add_argument("--out-dir", default="/tmp/guildtune_bench_multigpu")
            r.add_argument("--out", default=str(REPO / "bench" / "results" / "train_throughput_multigpu.json"))
            r.add_argument("--run-cap-s", type=int, default=600)
        elif name == "run":
            r.add_argument("--variant", required=True, help=f"one of {VARIANTS}, optionally @field=value ...")
            r.add_argument("--profile", default=None, help="write a profile of steps 20-22 to this file")
            r.add_argument("--out", required=True)
            r.add_argument("--work-dir", default="/tmp/guildtune_bench_work")
            r.add_argument("--n-conv", type=int, default=2000)
            r.add_argument("--seed", type=int, default=1234)
            r.add_argument("--median-len", type=float, default=250.0)
            r.add_argument("--sigma", type=float, default=0.8)
            r.add_argument("--min-len", type=int, default=24)
            r.add_argument("--max-len", type=int, default=1024)
            r.add_argument("--warmup", type=int, default=5)
            r.add_argument("--steps", type=int, default=60)
        else:
            r.add_argument("--out-dir", required=True)
            r.add_argument("--variants", default=" ".join(VARIANTS))
            r.add_argument("--anchor-results", default=None)
            r.add_argument("--run-cap-s", type=int, default=240)
            r.add_argument("--profile", default=None, help="variant to profile (steps 20-22)")
    c = sub.add_parser("check-flash")
    c.add_argument("--out", required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--runs-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--anchor-results", default=None)
    a = p.parse_args()
    if a.cmd == "run":
        if a.tiny:  # the anchors' --tiny sizes
            a.n_conv, a.max_len, a.median_len, a.min_len = 96, 96, 40.0, 16
            a.warmup, a.steps = 2, 4
        cmd_run(a)
    elif a.cmd == "all":
        cmd_all(a)
    elif a.cmd == "multigpu":
        if a.gpus < 1:
            raise SystemExit(f"--gpus {a.gpus}: give the number of GPUs to scale up to (1 or more)")
        cmd_multigpu(a)
    elif a.cmd == "check-flash":
        cmd_check_flash(a)
    else:
        cmd_summarize(a)


if __name__ == "__main__":
    main()
