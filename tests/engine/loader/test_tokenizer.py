from __future__ import annotations

import json
import shutil

import jinja2
import pytest

from engine.loader.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "naïve café résumé — Straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇫🇷 mixed with text",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != None:\n\t\tpass\n",
    "   leading spaces, trailing spaces   \n\n\n  multiple\r\nnewlines\t\ttabs",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'll we've they're it's O'Neil's",
    "3.14159 + 2.71828 = 5.85987; 1,000,000 vs 1e6",
    "",
    " ",
    "<repo_name>tessera<file_sep>main.py\nprint('x')<|endoftext|>",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 👋"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Tell me a joke."}],
]


@pytest.fixture(scope="module")
def tok(default_dir):
    return Tokenizer(default_dir)


@pytest.fixture(scope="module")
def hf_tok(default_dir):
    return transformers.AutoTokenizer.from_pretrained(default_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)


def test_plain_text_round_trips(tok):
    for text in TEXTS:
        if "<" not in text:
            assert tok.decode(tok.encode(text)) == text


def test_special_tokens(tok, hf_tok):
    assert tok.encode("<|im_start|>") == [1]
    assert tok.bos_token_id == 1 and tok.eos_token_ids == (2,) and tok.pad_token_id == 2
    assert tok.vocab_size == len(hf_tok) == 49152
    assert tok.all_special_ids == list(range(17))
    assert tok.decode([1, 28120, 2]) == tok.decode([28120])
    assert tok.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    assert tok.id_to_token(28120) == hf_tok.convert_ids_to_tokens(28120)


def test_decode_ignores_out_of_vocab_ids(tok):
    # Synthetic models with a larger vocabulary borrow this tokenizer.
    assert tok.decode([28120, 10**6]) == tok.decode([28120])


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, hf_tok, messages, add_generation_prompt):
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    hf_ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    hf_ids = hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids
    assert tok.tokenize_chat(messages, add_generation_prompt=add_generation_prompt) == list(hf_ids)


def test_default_system_prompt_is_inserted(tok):
    text = tok.apply_chat_template(CHATS[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")


TOOLS_TEMPLATE = (
    "{%- if tools %}{{ bos_token }}TOOLS: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    "{% if enable_thinking is defined and not enable_thinking %} /no_think{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <in> a city & more",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def custom_dir(default_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("custom_tok")
    shutil.copy(default_dir / "tokenizer.json", d / "tokenizer.json")
    cfg = json.loads((default_dir / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TOOLS_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 16}))
    return d


def test_tools_and_kwargs_match_transformers(custom_dir):
    ours, hf = Tokenizer(custom_dir), transformers.AutoTokenizer.from_pretrained(custom_dir)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    got = ours.apply_chat_template(msgs, tools=TOOLS, enable_thinking=False)
    assert got == hf.apply_chat_template(msgs, tools=TOOLS, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
    assert "<in> a city & more" in got  # tojson must not HTML-escape
    assert got.startswith("<|im_start|>TOOLS:") and got.endswith("assistant: /no_think")


def test_raise_exception_and_sandbox(custom_dir):
    tok = Tokenizer(custom_dir)
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    # Templates are untrusted: no attribute escapes and no mutation of the caller's messages.
    for evil in ("{{ ''.__class__.__base__.__subclasses__() }}", "{{ messages.append(1) }}"):
        with pytest.raises(jinja2.exceptions.SecurityError):
            tok.apply_chat_template([], chat_template=evil)


def test_eos_ids_are_the_union_of_all_configs(custom_dir):
    # generation_config [0, 2], config 16, tokenizer_config eos_token "<|im_end|>" (= 2)
    assert Tokenizer(custom_dir).eos_token_ids == (0, 2, 16)


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path)
