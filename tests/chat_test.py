"""fcrl.chat.render: the method's prompt through chat templates with and without a `tools`
argument, the record's own system text kept, plain chat without tools."""

import json

import pytest
import transformers

from fcrl import chat
from fcrl.models.gguf import default_model_dir
from fcrl.models.tiny import char_tokenizer

TOOLS = [{"name": "get_weather", "description": "Weather of a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]  # fmt: skip
ASK = [{"role": "user", "content": "Weather in Oslo?"}]
# A template in the manner of Qwen2.5's: tools, when given, are listed in the system turn.
TOOLS_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t['function']['name'] }};{% endfor %}</tools>\n"
    "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def decoded(tokenizer, *args, **kwargs) -> str:
    return tokenizer.decode(chat.render(tokenizer, *args, **kwargs))


@pytest.fixture(scope="module")
def smollm2():
    return transformers.AutoTokenizer.from_pretrained(default_model_dir())


def test_smollm2_gets_the_instruction_and_docs_in_its_system_turn(smollm2):
    text = decoded(smollm2, ASK, TOOLS)
    assert text.startswith("<|im_start|>system\nYou are an expert in composing functions.")
    assert "<think></think>" in text and "<answer>[func_name1(param=value)" in text
    assert json.dumps(TOOLS) in text
    assert text.endswith("<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>system") == 1  # the template's default system turn is gone


def test_plain_chat_without_tools_is_the_template_alone(smollm2):
    want = smollm2.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert decoded(smollm2, ASK) == want


def test_a_template_that_takes_tools():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert chat.takes_tools(tokenizer)
    think_answer = decoded(tokenizer, ASK, TOOLS)
    assert "<tools>" not in think_answer and json.dumps(TOOLS) in think_answer  # docs: ours
    tool_call = decoded(tokenizer, ASK, TOOLS, fmt="tool_call")
    assert tool_call.startswith("<tools>get_weather;</tools>")  # docs: the template's
    assert json.dumps(TOOLS) not in tool_call and "<think></think>" in tool_call
    plain = char_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="tool_call"):
        chat.render(plain, ASK, TOOLS, fmt="tool_call")
    with pytest.raises(ValueError, match="fmt"):
        chat.render(tokenizer, ASK, TOOLS, fmt="xml")


def test_the_records_system_text_follows_the_instruction(smollm2):
    messages = [{"role": "system", "content": "Answer briefly."}, *ASK]
    text = decoded(smollm2, messages, TOOLS)
    assert text.count("<|im_start|>system") == 1
    assert text.index(json.dumps(TOOLS)) < text.index("Answer briefly.") < text.index("Oslo")


def test_compact_docs_are_one_line_per_function(smollm2):
    tools = [*TOOLS, {"name": "log", "description": "Record a workout.", "parameters": {
        "type": "object", "required": ["minutes"], "properties": {
            "activity": {"type": "string", "enum": ["running", "rowing"]},
            "minutes": {"type": "integer", "description": "How long."}}}}]  # fmt: skip
    text = decoded(smollm2, ASK, tools, docs="compact")
    assert "- get_weather(city: string): Weather of a city.\n" in text
    assert "- log(activity: 'running'|'rowing' = None, minutes: integer): Record a workout." in text
    assert "<answer>[func(param=value), ...]</answer>" in text and "How long." not in text
    assert text.count("<think>") == 1
    assert len(chat.render(smollm2, ASK, tools, docs="compact")) < 0.6 * len(
        chat.render(smollm2, ASK, tools)
    )
    with pytest.raises(ValueError, match="docs"):
        chat.render(smollm2, ASK, tools, fmt="bfcl", docs="compact")
    with pytest.raises(ValueError, match="docs"):
        chat.render(smollm2, ASK, tools, docs="yaml")


def test_bfcl_format_is_bfcls_own_system_prompt():
    """fmt="bfcl" renders BFCL's default prompt-mode system prompt, word for word."""
    from bfcl_eval.constants.default_prompts import DEFAULT_SYSTEM_PROMPT_FORMAT
    from bfcl_eval.model_handler.utils import formulate_system_prompt

    from fcrl.eval import bfcl

    bfcl.official_accepts("[]", {}, "irrelevance")  # the checker's imports, with their stand-in
    for entry in (bfcl.load("simple_python")[0], bfcl.load("live_multiple")[7]):
        want = formulate_system_prompt(DEFAULT_SYSTEM_PROMPT_FORMAT, entry["function"])
        assert chat.system_prompt(entry["function"], "bfcl") == want
