"""trainer/speed.py: the plan's choices as SFTConfig arguments, and the packed path on CPU (the planner: test_plan.py)."""
from __future__ import annotations

import pytest
import torch

from test_plan import _gpu, _llama_1b
from tiny_model import make_tiny_model_dir
from trainer.config import TrainConfig
from trainer.plan import plan
from trainer.speed import sft_overrides


def test_overrides_are_valid_sft_config_arguments():
    from trl import SFTConfig

    choice = plan(TrainConfig(memory_cap_gib=3.6), _llama_1b(), _gpu(80), lengths=[330] * 10)
    kw = sft_overrides(choice)
    assert kw["packing"] and kw["max_length"] == 2688 and kw["per_device_train_batch_size"] == 1
    args = SFTConfig(output_dir="/tmp/unused", use_cpu=True, **{**kw, "optim": "adamw_torch"})
    assert args.packing and args.padding_free
    assert getattr(args, "activation_checkpointing", args.gradient_checkpointing)


@pytest.mark.parametrize("pretokenized", [True, False])
def test_packed_training_on_cpu_runs_through_the_project_trainer(tmp_path, pretokenized):
    """packing="on" on CPU: fixed rows, per-conversation attention (reference kernel), loss falls."""
    from datasets import Dataset

    from trainer.sft import prepare_trainer

    model_dir = make_tiny_model_dir(tmp_path / "tiny", "llama")
    cfg = TrainConfig(packing="on", per_device_batch_size=4, max_length=64, max_steps=12, learning_rate=3e-3,
                      lora_r=8, device="cpu", logging_steps=1)
    if pretokenized:
        g = torch.Generator().manual_seed(0)
        rows = [torch.randint(10, 300, (int(n),), generator=g).tolist() for n in torch.randint(8, 40, (24,), generator=g)]
        ds = Dataset.from_dict({"input_ids": rows})
    else:
        ds = Dataset.from_dict({"messages": [[{"role": "user", "content": f"What is {i} plus one?"},
                                              {"role": "assistant", "content": f"It is {i + 1}."}]
                                             for i in range(24)]})
    prepared = prepare_trainer(model_dir, ds, cfg, tmp_path / "work")
    trainer = prepared.trainer
    assert type(trainer.data_collator).__name__ == "StaticRowCollator"
    assert trainer.model.config._attn_implementation == "guildtune_varlen"
    batch = next(iter(trainer.get_train_dataloader()))
    row_len = prepared.plan.row_len
    assert batch["input_ids"].shape == (1, row_len) and batch["cu_seq_lens_q"][-1] == row_len
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
