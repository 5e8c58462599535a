"""The Go templates we give Ollama render exactly what the models' HF chat templates render.

A wrong TEMPLATE or stop token is the usual cause of garbled answers from a fine-tune on Ollama, so
each family's template is rendered (tests/go_template.py, Ollama's data preparation) and compared
with the official Hugging Face template for the same conversations.
"""
import json

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from go_template import render_ollama
from ollama_standin import check_go_template
from serving.ollama_templates import FORMATS, chat_format_for

# Official HF chat templates (text-only parts), as shipped with Gemma 3, Llama 3 and Qwen2.5.
HF_GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
HF_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
HF_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REFERENCES = {"gemma": HF_GEMMA3, "llama3": HF_LLAMA3, "chatml": HF_CHATML}

CONVERSATIONS = [
    [{"role": "user", "content": "When is the raid?"}],
    [{"role": "system", "content": "You answer for the guild."}, {"role": "user", "content": "Who leads?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Rule one?"},
        {"role": "assistant", "content": "Be kind."},
        {"role": "user", "content": "Rule two?"},
    ],
]


def hf_render(template: str, messages) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    # BOS is not part of the prompt text Ollama renders: its tokenizer adds it.
    return env.from_string(template).render(messages=messages, bos_token="", add_generation_prompt=True)


@pytest.mark.parametrize("family", sorted(FORMATS))
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+user", "multi-turn"])
def test_go_template_renders_like_the_hf_template(family, messages):
    fmt = FORMATS[family]
    check_go_template(fmt.template)
    assert render_ollama(fmt.template, messages) == hf_render(REFERENCES[family], messages)


def test_every_stop_token_ends_a_turn_in_its_template():
    for fmt in FORMATS.values():
        rendered = render_ollama(fmt.template, CONVERSATIONS[2])
        assert any(stop in rendered for stop in fmt.stop), fmt.family


def test_format_is_chosen_from_the_chat_template_then_the_model_type(tmp_path):
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert chat_format_for(adapter, base).family == "chatml"  # no template anywhere: model_type
    (base / "tokenizer_config.json").write_text(json.dumps({"chat_template": HF_LLAMA3}))
    assert chat_format_for(adapter, base).family == "llama3"
    (adapter / "chat_template.jinja").write_text(HF_GEMMA3)  # training's template wins
    assert chat_format_for(adapter, base).family == "gemma"
    (base / "tokenizer_config.json").unlink()
    (base / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="cannot tell which chat format"):
        chat_format_for(tmp_path / "nothing", base)



@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tiny_model import make_tiny_model_dir

    return AutoTokenizer.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tok"), "llama"))


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_go_template_renders_like_the_template_training_used(family, tokenizer):
    """The trainer's templates (trainer/templates/*.jinja) define what the fine-tune saw."""
    from trainer.chat_template import END_OF_TURN, family_template

    for messages in CONVERSATIONS:
        trained = tokenizer.apply_chat_template(messages, chat_template=family_template(family),
                                                tokenize=False, add_generation_prompt=True)
        trained = trained.removeprefix(tokenizer.bos_token)
        assert render_ollama(FORMATS[family].template, messages) == trained
    assert END_OF_TURN[family] in FORMATS[family].stop
