"""Tokenizer of a HF model directory: `tokenizers` for text <-> ids, jinja2 for the chat template.

Matches `transformers.AutoTokenizer` (ids, decoding, chat-template rendering) without importing
transformers, which is a test-only dependency."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_str(value: Any) -> str | None:
    # tokenizer_config stores special tokens either as strings or as serialized AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body as-is;
    without it templates that use the tag would not even parse."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson HTML-escapes (<, >, &), which would corrupt tool schemas in prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    # Templates ship with model files, i.e. untrusted code: always render in the immutable sandbox.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """Loaded from a directory holding tokenizer.json (+ tokenizer_config.json, config.json,
    generation_config.json, chat_template.jinja, all optional)."""

    def __init__(self, path_dir: str | Path) -> None:
        self.path = Path(path_dir)
        tok_file = self.path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{self.path}: no tokenizer.json")
        self._tok = HFTokenizer.from_file(str(tok_file))
        self.config = _read_json(self.path / "tokenizer_config.json")
        model_cfg = _read_json(self.path / "config.json")
        gen_cfg = _read_json(self.path / "generation_config.json")
        self.special_tokens_map: dict[str, str] = {
            attr: s for attr in _SPECIAL_ATTRS if (s := _token_str(self.config.get(attr))) is not None}
        self.chat_template: str | None = self._load_chat_template()

        bos = self.special_tokens_map.get("bos_token")
        bos_id = self.token_to_id(bos) if bos else None
        if bos_id is None:
            bos_id = gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id"))
        self.bos_token_id: int | None = bos_id
        # Chat models often stop on several ids (e.g. Llama 3: <|end_of_text|> and <|eot_id|>) that
        # are spread across the three config files, so take the union, generation_config first.
        eos: list[int] = _as_ids(gen_cfg.get("eos_token_id")) + _as_ids(model_cfg.get("eos_token_id"))
        eos_str = self.special_tokens_map.get("eos_token")
        if eos_str and (eid := self.token_to_id(eos_str)) is not None:
            eos.append(eid)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        pad = self.special_tokens_map.get("pad_token")
        self.pad_token_id: int | None = self.token_to_id(pad) if pad else None

    def _load_chat_template(self) -> str | None:
        jinja_file = self.path / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        return template

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.id_to_token(i) for i in ids]

    @property
    def all_special_ids(self) -> list[int]:
        ids = [i for i, t in self._tok.get_added_tokens_decoder().items() if t.special]
        return sorted(ids)

    # ---- text <-> ids -----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        # Ids outside the vocabulary (e.g. sampled from a synthetic model's larger embedding) are
        # dropped rather than raising: decoding is for display and must never crash generation.
        n = self.vocab_size
        ids = [int(i) for i in ids if 0 <= int(i) < n]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat -------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, chat_template: str | None = None,
                            **kwargs: Any) -> str:
        """Render messages to the prompt string, exactly as HF `apply_chat_template(tokenize=False)`:
        the template sees messages, tools, add_generation_prompt, the special-token strings
        (bos_token, eos_token, ...) and any extra kwargs (e.g. enable_thinking)."""
        template = chat_template or self.chat_template
        if not template:
            raise ValueError(f"{self.path}: the tokenizer has no chat template")
        # HF always passes documents (None by default); templates may test `documents is defined`.
        context = {"documents": None, **self.special_tokens_map, **kwargs}
        return _compile_template(template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **context)

    def tokenize_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                      tools: list[dict] | None = None, **kwargs: Any) -> list[int]:
        """Prompt ids for a chat. The rendered template already holds every special marker, so no
        further special tokens are added (as HF does for tokenize=True)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                        tools=tools, **kwargs)
        return self.encode(text, add_special_tokens=False)
