"""Multi-GPU training (issue 14): GUILDTUNE_TRAIN_GPUS, the launch plan, and real multi-process runs on
the CPU (gloo, 2 processes, the tiny model) through accelerate's launcher, as the daemon starts them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guildtune.runtime import daemon_options
from guildtune.settings import SettingsError, load_settings
from trainer.config import TrainConfig
from trainer.estimate import EMBEDDED_GEMMA_CONFIG, estimate_memory
from trainer.launch import FSDP_ARGS, LaunchError, LaunchPlan, choose_strategy, per_gpu_bytes, process_count

PROBE = Path(__file__).with_name("multi_gpu_probe.py")
GUILD = 1414


# --- the setting -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, value", [("auto", "auto"), ("AUTO", "auto"), ("2", "2"), (" 8 ", "8")])
def test_train_gpus_setting(monkeypatch, raw, value):
    monkeypatch.setenv("GUILDTUNE_TRAIN_GPUS", raw)
    assert load_settings().train_gpus == value


@pytest.mark.parametrize("raw", ["two", "0", "-1", "1.5"])
def test_bad_train_gpus_is_named_with_the_fix(monkeypatch, raw):
    monkeypatch.setenv("GUILDTUNE_TRAIN_GPUS", raw)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert f"GUILDTUNE_TRAIN_GPUS={raw!r}" in str(err.value) and "auto" in str(err.value)


# --- how many processes, which parallelism ------------------------------------------------------------

def test_process_count():
    assert process_count("auto", "auto", visible_gpus=0) == 1  # CPU-only machine
    assert process_count("auto", "auto", visible_gpus=4) == 4
    assert process_count("auto", "cpu", visible_gpus=4) == 1
    assert process_count("2", "cpu", visible_gpus=0) == 2  # gloo processes on the CPU
    assert process_count("2", "cuda", visible_gpus=4) == 2
    with pytest.raises(LaunchError, match=r"only 2 GPU\(s\) are visible.*at most 2"):
        process_count("4", "auto", visible_gpus=2)
    with pytest.raises(LaunchError, match="no CUDA GPU is visible.*GUILDTUNE_DEVICE=cpu"):
        process_count("2", "auto", visible_gpus=0)


LLAMA_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "tie_word_embeddings": False}


def estimates(config, n):
    cfg = TrainConfig().for_processes(n)
    kw = dict(seq_len=cfg.max_length, batch_size=cfg.per_device_batch_size, lora_r=cfg.lora_r,
              gradient_checkpointing=True)
    return estimate_memory(config, "lora", **kw), estimate_memory(config, "qlora", **kw)


def test_strategy_follows_the_per_gpu_estimate():
    lora, qlora = estimates(EMBEDDED_GEMMA_CONFIG, 2)
    assert choose_strategy(2, lora, qlora, 24.0, "auto", bitsandbytes=True)[0] == "ddp"  # 270M fits one GPU
    lora, qlora = estimates(LLAMA_8B, 4)
    replicated = lora.total_bytes / 2**30
    assert 16 < replicated < 20  # 16 GB of bf16 weights + LoRA state and activations
    assert per_gpu_bytes(lora, 4) < lora.total_bytes - 0.7 * lora.weights_bytes  # 3/4 of the weights elsewhere
    strategy, reason = choose_strategy(4, lora, qlora, 16.0, "auto", bitsandbytes=True)
    assert strategy == "fsdp" and "sharded over 4 GPUs" in reason  # 8B on 4 x 16 GB cards: shard it
    assert choose_strategy(4, lora, qlora, 80.0, "auto", bitsandbytes=True)[0] == "ddp"
    # QLoRA configured: 4-bit weights cannot be sharded, so DDP on the LoRA weights
    strategy, reason = choose_strategy(4, lora, qlora, 80.0, "on", bitsandbytes=True)
    assert strategy == "ddp_qlora" and "cannot be sharded" in reason
    # too big even sharded: QLoRA when allowed and available, else FSDP with a warning
    lora2, qlora2 = estimates(LLAMA_8B, 2)
    assert choose_strategy(2, lora2, qlora2, 9.0, "auto", bitsandbytes=True)[0] == "ddp_qlora"
    strategy, reason = choose_strategy(2, lora2, qlora2, 9.0, "off", bitsandbytes=True)
    assert strategy == "fsdp" and "may run out of memory" in reason


def test_launch_commands_are_accepted_by_accelerates_parser():
    from accelerate.commands.launch import launch_command_parser

    assert LaunchPlan(1, "single", "cpu").command(7) == [sys.executable, "-m", "trainer.job", "7"]
    parser = launch_command_parser()
    ddp = LaunchPlan(2, "ddp", "cuda").command(7)
    assert ddp[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = parser.parse_args(ddp[3:])
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 2
    assert args.module and args.training_script == "trainer.job" and args.training_script_args == ["7"]
    fsdp = parser.parse_args(LaunchPlan(4, "fsdp", "cuda").command(7)[3:])
    assert fsdp.use_fsdp and not fsdp.multi_gpu and fsdp.num_processes == 4 and fsdp.fsdp_version == "2"
    assert fsdp.fsdp_state_dict_type == "FULL_STATE_DICT" and fsdp.training_script == "trainer.job"
    assert set(FSDP_ARGS) <= set(LaunchPlan(4, "fsdp", "cuda").command(7))
    assert LaunchPlan(2, "ddp_qlora", "cuda").env() == {"GUILDTUNE_QLORA": "on"}
    assert LaunchPlan(2, "fsdp", "cuda").env() == {"GUILDTUNE_QLORA": "off"}


def test_per_gpu_plan_keeps_the_global_batch():
    one = TrainConfig(per_device_batch_size=8)
    two = one.for_processes(2)
    assert (two.num_processes, two.per_device_batch_size, two.gradient_accumulation_steps) == (2, 4, 1)
    assert two.for_processes(2) is two and two.steps_per_epoch(100) == one.steps_per_epoch(100) == 13
    assert two.total_steps(100) == one.total_steps(100)
    accumulating = TrainConfig(per_device_batch_size=8, gradient_accumulation_steps=4).for_processes(2)
    assert (accumulating.per_device_batch_size, accumulating.gradient_accumulation_steps) == (8, 2)
    odd = one.for_processes(3)  # 8 rows over 3 GPUs: 3 each, the global batch grows by 1 row, not 16
    assert odd.per_device_batch_size == 3 and odd.steps_per_epoch(90) == 10
    assert TrainConfig(per_device_batch_size=1).for_processes(4).per_device_batch_size == 1
    assert TrainConfig.for_dataset(3000).for_processes(2).per_device_batch_size == 4  # 8 a step over 2 GPUs


def test_planner_estimates_per_gpu_under_fsdp():
    from trainer.estimate import load_config
    from trainer.plan import Machine, plan

    config = load_config(LLAMA_8B)
    cfg = TrainConfig(gradient_checkpointing="on", packing="off", per_device_batch_size=4)
    gpu = dict(cuda=True, bf16_supported=True, gpu_total_bytes=80 * 2**30)
    whole = plan(cfg, config, Machine(**gpu)).estimate_gib["chosen"] * 2**30
    quarter = plan(cfg, config, Machine(**gpu, weight_shards=4)).estimate_gib["chosen"] * 2**30
    weights = 2 * estimate_memory(config, "lora").n_params
    assert abs((whole - quarter) - 0.75 * weights) < 0.05 * weights


def test_a_rank_ends_with_its_code_and_skips_the_interpreters_teardown():
    """A rank leaves by os._exit (the teardown can abort on a joinable gloo thread); a single process by sys.exit."""
    script = ("import atexit, sys; from trainer.distributed import end_process; "
              "atexit.register(lambda: print('teardown ran')); print('trained', flush=True); end_process(3)")
    root = Path(__file__).resolve().parents[1]
    for world, teardown in (("2", False), ("1", True)):
        done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                              env={"WORLD_SIZE": world, "RANK": "1", "PATH": "/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 3, done.stderr
        assert "trained" in done.stdout and ("teardown ran" in done.stdout) == teardown


# --- real multi-process training on the CPU -------------------------------------------------------------

def test_two_ranks_train_what_one_process_trains_on_the_same_global_batch(tiny_model_dir, tmp_path):
    """2 ranks x batch 2 (gloo) against 1 process x batch 4: different rows per rank that together make the
    single process's batch, the same LoRA weights, and only rank 0 writes the adapter."""
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file

    sys.path.insert(0, str(PROBE.parent))
    import multi_gpu_probe as probe

    import trainer.sft as sft

    argv = LaunchPlan(2, "ddp", "cpu").argv([str(PROBE), str(tmp_path), str(tiny_model_dir)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[1]["output_files"] == [] and ranks[1]["steps"] == 4  # the follower trained, wrote nothing
    assert "adapter_model.safetensors" in ranks[0]["output_files"]
    assert len(ranks[0]["loss_history"]) == 4

    single_rows: list = []
    original = sft.prepare_trainer
    probe.record_rows(single_rows)
    try:
        single = sft.run_sft(tiny_model_dir, Dataset.from_dict({"messages": probe.facts(8)}),
                             TrainConfig(**probe.RUN), tmp_path / "single")
    finally:
        sft.prepare_trainer = original
    assert single.steps == 4 and len(single_rows) == 4
    for step, rows in enumerate(single_rows):
        r0, r1 = ranks[0]["rows"][step], ranks[1]["rows"][step]
        assert len(r0) == len(r1) == 2 and len(rows) == 4
        assert not {tuple(x) for x in r0} & {tuple(x) for x in r1}, f"step {step}: both ranks got the same row"
        assert sorted(r0 + r1) == sorted(rows), f"step {step}: the ranks' rows are not the single batch"

    multi = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    alone = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert multi.keys() == alone.keys()
    for name, weight in alone.items():
        if "lora_B" in name:  # B starts at zero: what it holds is what training put there
            assert weight.abs().max() > 1e-3
        assert torch.allclose(multi[name], weight, rtol=1e-3, atol=5e-5), \
            f"{name}: max diff {(multi[name] - weight).abs().max():.2e}"
    # same losses too (each step's loss is gathered over the ranks)
    assert [round(x, 3) for _, x in ranks[0]["loss_history"]] == [round(x, 3) for _, x in single.loss_history]


@pytest.fixture
async def two_process_env(tmp_path, monkeypatch, tiny_model_dir):
    from serving.local_server import LocalServer
    from storage.db import Database

    monkeypatch.setenv("GUILDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUILDTUNE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GUILDTUNE_DEVICE", "cpu")
    monkeypatch.setenv("GUILDTUNE_TRAIN_GPUS", "2")
    monkeypatch.setenv("GUILDTUNE_TRAIN_MAX_STEPS", "6")
    monkeypatch.delenv("GUILDTUNE_DB", raising=False)
    settings = load_settings()
    db = await Database.open(settings.db_path)
    for i in range(12):
        await db.examples.add(GUILD, [{"role": "user", "content": f"What is the secret word number {i}?"},
                                      {"role": "assistant", "content": f"The secret word number {i} is w{i}."}],
                              source="import", author_id=None, status="approved")
    server = LocalServer(str(tiny_model_dir), device="cpu")
    yield settings, db, server
    await server.close()
    await db.close()


async def test_daemon_launches_two_processes_and_only_rank_0_publishes(two_process_env, capfd):
    from trainer.daemon import TrainerDaemon

    settings, db, server = two_process_env
    run, _, _ = await db.runs.enqueue(GUILD, trigger="retrain")
    outcome = await TrainerDaemon(db, daemon_options(settings), server).process(await db.runs.claim(GUILD, run.id))
    done = outcome.run
    assert outcome.published, (done.error, done.gate_reason)
    assert done.status == "succeeded" and done.step == done.total_steps == 6 and len(done.loss_history) == 6
    versions = await db.versions.list(GUILD, limit=10)
    assert len(versions) == 1 and versions[0].status == "active"
    adapter = Path(versions[0].adapter_path)
    trained = json.loads((adapter / "training_config.json").read_text())
    assert trained["config"]["num_processes"] == 2 and trained["steps"] == 6  # really two processes
    assert sorted(p.name for p in adapter.parent.iterdir()) == [adapter.name]  # nothing else written
    logs = capfd.readouterr().err
    assert "rank 1/2: trained 6 steps" in logs  # the follower trained every step, and only trained


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.skipif(_visible_gpus() >= 3, reason="this machine has the 3 GPUs the test asks for")
async def test_daemon_fails_the_run_when_the_gpus_are_not_there(two_process_env):
    from trainer.daemon import TrainerDaemon

    settings, db, server = two_process_env
    settings = settings.model_copy(update={"device": "auto", "train_gpus": "3"})
    run, _, _ = await db.runs.enqueue(GUILD, trigger="retrain")
    outcome = await TrainerDaemon(db, daemon_options(settings), server).process(await db.runs.claim(GUILD, run.id))
    assert not outcome.published and outcome.run.status == "failed"
    assert "GUILDTUNE_TRAIN_GPUS=3" in outcome.run.error and "GUILDTUNE_DEVICE=cpu" in outcome.run.error
