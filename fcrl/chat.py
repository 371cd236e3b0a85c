"""The one prompt renderer, and a chat model around the sampler: what every job talks through.

  ids = render(tokenizer, record["messages"], record["tools"])   # the method's format
  ids = render(tokenizer, [{"role": "user", "content": "Hi"}])   # plain chat: no tools

With tools, a system instruction lists them (JSON schema, as in BFCL's prompt mode) and asks for
`<think>…</think><answer>[f(a=1), …]</answer>` (fmt "think_answer"), a bare BFCL call list
("bfcl", under BFCL's own prompt-mode system prompt, word for word), or, for templates that
take a `tools` argument (Qwen2.5, Qwen3), the template's own `<tool_call>` blocks after a
`<think>` span ("tool_call"). The text then goes through the model's chat template, so train,
SFT, eval, generate, serve and the judge all see the same prompt.
"""

import json
import pathlib
from collections.abc import Sequence

import transformers
from flax import nnx

from fcrl.models import load_hf
from fcrl.sampler import Sampler, SamplingConfig
from fcrl.verifier import FORMATS  # a prompt format for each answer format

_TASK = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. Based on the question, make one or more function calls to achieve the purpose. "
    "If none of the functions can be used, make no call."
)
_ANSWER = {
    "think_answer": (
        "First think step by step inside <think></think>: which function fits, and which values "
        "the question gives. Then write the calls inside <answer></answer> as a Python list of "
        "keyword-argument calls: <answer>[func_name1(param=value), func_name2(param=value)]"
        "</answer>. Write <answer>[]</answer> when no function fits."
    ),
    "tool_call": (
        "First think step by step inside <think></think>, then make the calls with the tools "
        "you are given, or none when no tool fits."
    ),
}
# BFCL's default prompt-mode system prompt ("classic" style, plain text, JSON docs indented by
# 4), word for word, its missing space and double space included; the functions follow it.
# tests/chat_test.py checks it against bfcl_eval's formulate_system_prompt.
_BFCL = (
    "You are an expert in composing functions.You are given a question and a set of possible "
    "functions. Based on the question, you will need to make one or more function/tool calls to "
    "achieve the purpose. If none of the functions can be used, point it out. If the given "
    "question lacks the parameters required by the function, also point it out.\n\n"
    "You should only return the function calls in your response.\n\nIf you decide to invoke "
    "any of the function(s), you MUST put it in the format of [func_name1(params_name1="
    "params_value1, params_name2=params_value2...), func_name2(params)].  You SHOULD NOT include "
    "any other text in the response.\n\nAt each turn, you should try your best to complete the "
    "tasks requested by the user within the current turn. Continue to output functions to call "
    "until you have fulfilled the user's request to the best of your ability. Once you have no "
    "more functions to call, the system will consider the current turn complete and proceed to "
    "the next turn or task.\n\nHere is a list of functions in json format that you can invoke.\n"
)

DOCS = ("json", "compact")  # how the system instruction lists the functions
_COMPACT = (
    "Call the functions below: <think>which fits, which values the question gives</think>"
    "<answer>[func(param=value), ...]</answer>, or <answer>[]</answer> if none fits.\nFunctions:"
)


def compact_doc(tool: dict) -> str:
    """One line per function: `name(param: type, opt: type = None): description`, enums as
    their values; parameter descriptions are left out (a third of the tokens of JSON docs)."""
    schema = tool.get("parameters") or {}
    required = set(schema.get("required", ()))
    args = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = "|".join(map(repr, prop["enum"])) if "enum" in prop else prop.get("type", "any")
        args.append(f"{name}: {kind}" + ("" if name in required else " = None"))
    return f"{tool['name']}({', '.join(args)}): {tool.get('description', '')}".rstrip(": ")


def system_prompt(tools: Sequence[dict], fmt: str = "think_answer", docs: str = "json") -> str:
    """The instruction for `fmt`, with the function docs unless the template renders them:
    BFCL's prompt-mode JSON, or (think_answer only) a short instruction and one line each."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: unknown prompt format {fmt!r}; expected one of {FORMATS}")
    if docs not in DOCS or (docs == "compact" and fmt != "think_answer"):
        raise ValueError(f"docs: {docs!r} is not one of {DOCS} (compact: think_answer only)")
    if docs == "compact":
        return "\n".join([_COMPACT, *(f"- {compact_doc(t)}" for t in tools)])
    if fmt == "bfcl":
        return _BFCL + json.dumps(list(tools), indent=4, ensure_ascii=False) + "\n"
    text = f"{_TASK}\n{_ANSWER[fmt]}"
    if fmt != "tool_call":
        text += "\nHere is a list of functions in JSON format that you can invoke:\n"
        text += json.dumps(list(tools), ensure_ascii=False)
    return text


def takes_tools(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders a `tools` argument (Qwen2.5 / Qwen3 do, SmolLM2 not)."""
    template = tokenizer.chat_template or ""
    return "tools" in (template if isinstance(template, str) else json.dumps(template))


def render(
    tokenizer: transformers.PreTrainedTokenizerBase,
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    fmt: str = "think_answer",
    docs: str = "json",
) -> list[int]:
    """Token ids of the conversation, ending with the assistant header. With `tools`, the
    method's instruction comes first in the system message (before any system text of the
    record's own)."""
    messages = [dict(m) for m in messages]
    kwargs = {}
    if tools:
        if fmt == "tool_call":
            if not takes_tools(tokenizer):
                raise ValueError(
                    f"fmt: 'tool_call' needs a chat template that takes tools; "
                    f"{tokenizer.name_or_path or 'this tokenizer'}'s does not"
                )
            kwargs["tools"] = [t if "function" in t else {"type": "function", "function": t}
                               for t in tools]  # fmt: skip
        system = system_prompt(tools, fmt, docs)
        if messages and messages[0].get("role") == "system":
            system += "\n\n" + messages.pop(0)["content"]
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **kwargs
    )
    # The template already wrote any special tokens it wants (e.g. <|im_start|>).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(model_dir: pathlib.Path, tokenizer: transformers.PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn ids: generation_config.json, else config.json, else the tokenizer's."""
    for name in ("generation_config.json", "config.json"):
        file = pathlib.Path(model_dir) / name
        eos = json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None
        if eos is not None:
            return [eos] if isinstance(eos, int) else list(eos)
    return [tokenizer.eos_token_id]


class ChatModel:
    """A checkpoint folder's model and tokenizer, answering conversations through the sampler;
    one compiled sampler per sampling setting. Used by generate, serve and the local judge."""

    def __init__(self, model_dir: pathlib.Path, dtype: str = "float32", fmt: str = "think_answer"):
        self.name, self.fmt = pathlib.Path(model_dir).name, fmt
        self.model = load_hf(model_dir, dtype=dtype, param_dtype=dtype)
        self.state = nnx.state(self.model)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.eos = eos_ids(model_dir, self.tokenizer)
        self.samplers = {}

    def buckets(self, max_new_tokens: int) -> tuple[int, ...]:
        """Prompt-length buckets (powers of two from 64) that leave room for the completion."""
        context = self.model.cfg.max_position_embeddings
        return tuple(b for b in (2**k for k in range(6, 16)) if b + max_new_tokens <= context)

    def sample(
        self, messages: Sequence[dict], tools: Sequence[dict] | None, sampling: SamplingConfig,
        seed: int = 0,
    ) -> tuple[list[int], list[dict]]:  # fmt: skip
        """The prompt's ids and the sampler's rows (`text`, `token_ids`, `finish_reason`, …)."""
        if sampling not in self.samplers:
            self.samplers[sampling] = Sampler(self.model, sampling, self.tokenizer, self.eos)
        prompt = render(self.tokenizer, messages, tools, self.fmt)
        return prompt, self.samplers[sampling].sample(self.state, [prompt], seed).rows()
