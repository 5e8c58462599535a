"""Packing without cross-contamination: a packed row trains exactly like its examples one by one.

The reference runs each example alone through the model's eager attention (an independent
implementation); the packed row goes through TRL's padding-free collator, our fixed-length
`StaticRowCollator` and the `guildtune_varlen` attention. Per-example losses and the gradients
must match; a negative control (the same row with plain causal attention) must not.
"""
from __future__ import annotations

import pytest
import torch

from tiny_model import make_tiny_model_dir
from trainer.packing import (ATTN_IMPLEMENTATION, StaticRowCollator, cu_seqlens_from_position_ids,
                             reference_varlen, register_varlen_attention, static_row_len, varlen_attention)

LENGTHS = [7, 19, 12, 30, 5]
ROW_LEN = 96  # > sum(LENGTHS) = 73: the row ends with a padding segment


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny_dir(request, tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp(f"pack-{request.param}"), request.param)


def _load(path, attn):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def _examples(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _packed_batch(examples, pad_id):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    inner = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)
    collate = StaticRowCollator(inner, row_len=ROW_LEN, pad_token_id=pad_id)
    return collate([{"input_ids": ids} for ids in examples])


def _token_nll(logits, ids):
    """Next-token NLL per position (shifted): position t predicts ids[t + 1]."""
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    return -logp.gather(-1, ids[1:, None])[:, 0]


def _per_example_losses_packed(model, batch, examples):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[0]
    nll = _token_nll(logits, batch["input_ids"][0])
    losses, start = [], 0
    for ids in examples:
        losses.append(nll[start:start + len(ids) - 1].mean())  # the segment's own next-token targets
        start += len(ids)
    return torch.stack(losses)


def _per_example_losses_alone(model, examples):
    out = []
    for ids in examples:
        t = torch.tensor([ids])
        out.append(_token_nll(model(input_ids=t).logits[0], t[0]).mean())
    return torch.stack(out)


def test_collator_makes_fixed_rows_with_boundaries(tiny_dir):
    from transformers import AutoTokenizer

    pad = AutoTokenizer.from_pretrained(tiny_dir).pad_token_id
    examples = _examples(200)
    batch = _packed_batch(examples, pad)
    assert batch["input_ids"].shape == (1, ROW_LEN)
    assert batch["position_ids"].shape == (1, ROW_LEN)
    starts = [0]
    for n in LENGTHS:
        starts.append(starts[-1] + n)
    assert batch["cu_seq_lens_q"].tolist() == starts + [ROW_LEN]  # the padding is its own segment
    assert batch["max_length_q"] == max(max(LENGTHS), ROW_LEN - sum(LENGTHS))
    labels = batch["labels"][0]
    # segment starts and all padding are never targets; every other real token is
    for s in starts[:-1]:
        assert labels[s] == -100
    assert (labels[sum(LENGTHS):] == -100).all()
    assert (batch["input_ids"][0, sum(LENGTHS):] == pad).all()
    assert int((labels != -100).sum()) == sum(n - 1 for n in LENGTHS)
    assert batch["position_ids"][0, starts[1]:starts[2]].tolist() == list(range(LENGTHS[1]))


def test_collator_refuses_rows_longer_than_the_budget():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = StaticRowCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True),
                                row_len=16, pad_token_id=0)
    with pytest.raises(ValueError, match="row_len is 16"):
        collate([{"input_ids": list(range(1, 12))}, {"input_ids": list(range(1, 12))}])


def test_packed_losses_and_gradients_equal_unpacked(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    examples = _examples(len(tok))
    batch = _packed_batch(examples, tok.pad_token_id)

    reference = _load(tiny_dir, "eager")
    packed = _load(tiny_dir, register_varlen_attention())
    assert packed.config._attn_implementation == ATTN_IMPLEMENTATION

    alone = _per_example_losses_alone(reference, examples)
    together = _per_example_losses_packed(packed, batch, examples)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)

    # Gradients of the summed per-example losses agree too (the backward is isolated as well).
    alone.sum().backward()
    together.sum().backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in packed.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_negative_control_plain_causal_attention_contaminates(tiny_dir):
    """The same packed row with ordinary causal attention over the whole row gives other losses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    examples = _examples(len(tok))
    batch = _packed_batch(examples, tok.pad_token_id)
    model = _load(tiny_dir, "sdpa")
    with torch.no_grad():
        alone = _per_example_losses_alone(model, examples)
        logits = model(input_ids=batch["input_ids"]).logits[0]  # no boundaries: one long sequence
    nll = _token_nll(logits, batch["input_ids"][0])
    start, diffs = LENGTHS[0], []
    for i, ids in enumerate(examples[1:], 1):
        diffs.append(abs(float(nll[start:start + len(ids) - 1].mean()) - float(alone[i])))
        start += len(ids)
    assert max(diffs) > 1e-3, "the control should see other examples; if not, the equality test proves nothing"


@pytest.mark.parametrize("window,softcap", [(None, None), (6, None), (None, 5.0)])
def test_varlen_attention_matches_per_segment_attention(window, softcap):
    """The attention function alone: per-segment causal attention, GQA, sliding window, softcap."""
    torch.manual_seed(1)
    cu = torch.tensor([0, 5, 16, 20], dtype=torch.int32)
    hq, hkv, d, total = 4, 2, 8, 20
    q, k, v = (torch.randn(total, h, d) for h in (hq, hkv, hkv))
    out = reference_varlen(q, k, v, cu, d ** -0.5, sliding_window=window, softcap=softcap)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        n = b - a
        qs, ks, vs = q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
        ks, vs = ks.repeat_interleave(hq // hkv, 0), vs.repeat_interleave(hq // hkv, 0)
        scores = qs @ ks.transpose(-1, -2) * d ** -0.5
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        i = torch.arange(n)
        allowed = i[None, :] <= i[:, None]
        if window:
            allowed &= i[None, :] > i[:, None] - window
        want = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ vs
        torch.testing.assert_close(out[a:b], want.transpose(0, 1), rtol=1e-5, atol=1e-5)

    class Mod(torch.nn.Module):
        is_causal = True

    # Through the transformers-facing signature: [B, H, S, D] in, [B, S, H, D] out.
    got, _ = varlen_attention(Mod(), q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                              None, scaling=d ** -0.5, sliding_window=window, softcap=softcap, cu_seq_lens_q=cu,
                              max_length_q=11)
    torch.testing.assert_close(got[0], out)


def test_boundaries_from_position_ids_and_row_length():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    assert cu_seqlens_from_position_ids(pos).tolist() == [0, 3, 5, 6, 10]
    assert static_row_len(330.0, 8) == 2688  # the anchors' 8 x mean length, rounded up to 64


def test_static_segments_pad_the_boundaries_with_empty_segments():
    """Compiled blocks: every row reports the same boundary-list length and max_length."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = StaticRowCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True),
                                row_len=64, pad_token_id=0, static_segments=8)
    batch = collate([{"input_ids": list(range(1, 11))}, {"input_ids": list(range(1, 6))}])
    assert batch["cu_seq_lens_q"].tolist() == [0, 10, 15, 64, 64, 64, 64, 64, 64]
    assert batch["max_length_q"] == 64
    q = torch.randn(64, 2, 8)
    ref = reference_varlen(q, q, q, batch["cu_seq_lens_q"], 8 ** -0.5)
    torch.testing.assert_close(ref, reference_varlen(q, q, q, torch.tensor([0, 10, 15, 64]), 8 ** -0.5))
