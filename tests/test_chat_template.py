"""Chat templates: Gemma's rendering, the assistant mask (answer + end-of-turn), and the refusal rules."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from tiny_model import make_tiny_model_dir, tiny_llama_dir, tiny_model_dir  # noqa: F401 (fixtures)
from trainer.chat_template import (ChatTemplateError, check_assistant_mask, family_template, gemma_chat_template,
                                   has_generation_markers, training_chat_template)

CHAT = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "ping"},
        {"role": "assistant", "content": "pong"}]


@pytest.fixture
def gemma_tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def masked_text(tok, messages, template=None) -> str:
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  chat_template=template)
    return tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])


def test_gemma_renders_like_gemma_with_system_folded_into_first_user_turn(gemma_tok):
    text = gemma_tok.apply_chat_template(CHAT, tokenize=False)
    assert text == ("<bos><start_of_turn>user\nBe nice.\n\nHello!<end_of_turn>\n"
                    "<start_of_turn>model\nHi there.<end_of_turn>\n"
                    "<start_of_turn>user\nping<end_of_turn>\n"
                    "<start_of_turn>model\npong<end_of_turn>\n")
    prompt = gemma_tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nBe nice.\n\nHello!<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_mask_is_each_answer_plus_its_end_of_turn(gemma_tok):
    assert masked_text(gemma_tok, CHAT) == "Hi there.<end_of_turn>pong<end_of_turn>"
    check_assistant_mask(gemma_tok)  # does not raise


def test_llama3_mask_is_each_answer_plus_eot(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert masked_text(tok, CHAT) == "Hi there.<|eot_id|>pong<|eot_id|>"
    assert tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_roles_must_alternate(gemma_tok):
    with pytest.raises(Exception, match="alternate"):
        gemma_tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                      tokenize=False)


def test_template_with_markers_is_kept(gemma_tok):
    assert training_chat_template(gemma_tok, "gemma3_text") == gemma_tok.chat_template


def test_templateless_gemma_gets_ours(gemma_tok):
    gemma_tok.chat_template = None
    template = training_chat_template(gemma_tok, "gemma3_text", "embedded gemma")
    assert template == gemma_chat_template() and has_generation_markers(template)


def test_templateless_unknown_model_is_refused_naming_it(tmp_path):
    tok = AutoTokenizer.from_pretrained(make_tiny_model_dir(tmp_path / "m", "llama"))
    tok.chat_template = None
    # a vocabulary without any family's special tokens
    tok.get_vocab = lambda: {"<unk>": 0, "hello": 1}
    with pytest.raises(ChatTemplateError, match="acme/mystery-7b has no chat template") as err:
        training_chat_template(tok, "mystery", "acme/mystery-7b")
    assert "generation" in str(err.value)  # says what to do
    assert isinstance(err.value, ValueError)


def test_stock_template_without_markers_gets_trls_training_variant(gemma_tok):
    from trl.chat_template_utils import gemma3_chat_template, gemma3_training_chat_template

    gemma_tok.chat_template = gemma3_chat_template
    template = training_chat_template(gemma_tok, "gemma3_text")
    assert template == gemma3_training_chat_template
    assert "Hi there.<end_of_turn>" in masked_text(gemma_tok, CHAT, template)


def test_unknown_llama3_shaped_template_gets_our_llama3_template(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = family_template("llama3").replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", "") + "{# a local edit #}"
    assert not has_generation_markers(tok.chat_template)
    assert training_chat_template(tok, "llama") == family_template("llama3")


def test_unknown_template_without_markers_is_refused(gemma_tok):
    gemma_tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="no {% generation %} markers"):
        training_chat_template(gemma_tok, "somearch", "acme/custom")


def test_mask_check_catches_a_template_that_leaves_out_end_of_turn(gemma_tok):
    bad = gemma_chat_template().replace("{{ message['content'] | trim }}{{ '<end_of_turn>' }}\n        {%- endgeneration -%}",
                                        "{{ message['content'] | trim }}\n        {%- endgeneration -%}{{ '<end_of_turn>' }}")
    assert bad != gemma_chat_template()
    assert masked_text(gemma_tok, CHAT, bad) == "Hi there.pong"
    with pytest.raises(ChatTemplateError, match="never learn to stop"):
        check_assistant_mask(gemma_tok, bad)
    markerless = gemma_chat_template().replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    with pytest.raises(ChatTemplateError, match="learn nothing"):
        check_assistant_mask(gemma_tok, markerless)
