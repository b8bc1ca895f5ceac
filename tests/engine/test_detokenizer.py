"""IncrementalDetokenizer with the real default tokenizer: incremental text equals a full decode,
stop strings across token boundaries, and the hold-back of the streamed deltas."""

from __future__ import annotations

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling_params import SamplingParams

MULTILINGUAL = (
    "Hello world! Héllo wörld — 你好，世界。こんにちは 🌍🚀👩‍👩‍👧‍👦 Привет мир. مرحبا بالعالم. "
    "नमस्ते दुनिया 😀 ok. Ünïcödé ßtraße, naïve café; 한국어 텍스트 🎉🎉 and ✓ ∑ ∞ ≠ ½.\n"
)
ENGLISH = ("The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and its cafés. "
           "Many visitors come every year to see the city of light.")


@pytest.fixture(scope="module")
def tok(default_model_dir):
    from engine.loader.tokenizer import Tokenizer

    return Tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def prompt(tok):
    return tok.encode("Question: tell me something.\nAnswer:")


def _detok(tok, prompt, **kw):
    return IncrementalDetokenizer(tok, SamplingParams(**kw), prompt)


def _stream(detok, ids, chunk=1):
    """Feeds ids like the engine does; returns (stop hit, deltas, number of tokens fed)."""
    deltas = []
    fed = 0
    hit = None
    for i in range(0, len(ids), chunk):
        part = ids[i:i + chunk]
        hit = detok.add(part)
        fed += len(part)
        finished = hit is not None or fed == len(ids)
        deltas.append(detok.delta(finished))
        if hit is not None:
            break
    return hit, deltas, fed


@pytest.mark.parametrize("chunk", [1, 3])
def test_incremental_text_equals_full_decode(tok, prompt, chunk):
    text = MULTILINGUAL * 4 + ENGLISH
    ids = tok.encode(text)
    assert len(ids) > 300, "long enough to slide the decode window many times"
    assert tok.decode(ids) == text
    d = _detok(tok, prompt)
    for i in range(0, len(ids), chunk):
        assert d.add(ids[i:i + chunk]) is None
        so_far = tok.decode(ids[:i + chunk])
        assert "\ufffd" not in d.text, "a partial UTF-8 sequence leaked into the text"
        assert so_far.startswith(d.text)
        # at most one incomplete character (a few bytes, i.e. at most a few tokens) is pending
        assert len(so_far.rstrip("\ufffd")) - len(d.text) <= 2
    assert d.text == text


def test_first_output_token_keeps_its_leading_space(tok, prompt):
    ids = tok.encode(" Paris is nice")
    d = _detok(tok, prompt)
    d.add(ids)
    assert d.text == " Paris is nice"


def test_special_tokens_are_skipped_unless_asked(tok, prompt):
    eos = tok.eos_token_ids[0]
    special = tok.decode([eos], skip_special_tokens=False)
    assert special
    ids = tok.encode("Hi there") + [eos]
    d = _detok(tok, prompt)
    d.add(ids)
    assert d.text == "Hi there"
    d = _detok(tok, prompt, skip_special_tokens=False)
    d.add(ids)
    assert d.text == "Hi there" + special


def _spanning(tok, text, stop):
    """Checks that `stop` straddles token boundaries in the encoding of `text`."""
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    assert all(stop not in p for p in pieces), f"{stop!r} fits in one token"
    return ids


@pytest.mark.parametrize("prefix", ["", MULTILINGUAL * 3])
@pytest.mark.parametrize("stop", ["apital of Fr", "Eiffel", "is Paris."])
def test_stop_string_across_token_boundaries(tok, prompt, prefix, stop):
    text = prefix + ENGLISH
    ids = _spanning(tok, text, stop)
    idx = text.index(stop)
    # the token that completes the stop string
    k = next(i for i in range(1, len(ids) + 1) if stop in tok.decode(ids[:i]))
    assert stop not in tok.decode(ids[:k - 1])

    d = _detok(tok, prompt, stop=(stop,))
    hit, deltas, fed = _stream(d, ids)
    assert hit == stop
    assert fed == k, "the stop is reported on the token that completes it"
    assert d.text == text[:idx]
    assert "".join(deltas) == text[:idx]

    d = _detok(tok, prompt, stop=(stop,), include_stop_str_in_output=True)
    hit, deltas, fed = _stream(d, ids)
    assert hit == stop and fed == k
    assert d.text == text[:idx + len(stop)]
    assert "".join(deltas) == text[:idx + len(stop)]


def test_the_earliest_of_several_stop_strings_wins(tok, prompt):
    ids = tok.encode(ENGLISH)
    d = _detok(tok, prompt, stop=("Tower", "known for", "Paris"))
    hit, _, _ = _stream(d, ids, chunk=len(ids))  # all at once: every stop string is in the new text
    assert hit == "Paris"
    assert d.text == ENGLISH[:ENGLISH.index("Paris")]


def test_a_stop_string_in_the_prompt_does_not_stop(tok):
    prompt_ids = tok.encode("The capital of")
    out = tok.encode(" France is Paris.")
    d = IncrementalDetokenizer(tok, SamplingParams(stop=("capital", "of France")), prompt_ids)
    assert d.add(out) is None
    assert d.text == " France is Paris."


@pytest.mark.parametrize("stop", [("apital of Fr",), ("Eiffel", "the Louvre and its"), ("city of light.",)])
def test_streamed_deltas_never_show_the_stop_string(tok, prompt, stop):
    ids = tok.encode(ENGLISH)
    d = _detok(tok, prompt, stop=stop)
    hold = max(len(s) for s in stop) - 1
    first = min(ENGLISH.index(s) for s in stop)
    emitted = ""
    for i, tid in enumerate(ids):
        hit = d.add([tid])
        done = hit is not None or i == len(ids) - 1
        emitted += d.delta(done)
        if not done:
            assert len(emitted) <= max(0, len(d.text) - hold), "the tail must be held back"
        # nothing streamed is ever taken back, and streaming never reaches into a stop string
        assert d.text.startswith(emitted)
        assert ENGLISH.startswith(emitted) and len(emitted) <= first, f"streamed part of a stop string: {emitted!r}"
        if done:
            break
    assert hit is not None
    assert emitted == d.text == ENGLISH[:first]


def test_held_back_text_is_flushed_when_the_request_ends_without_a_stop(tok, prompt):
    text = "The capital of France is Paris. The c"
    ids = tok.encode(text)
    d = _detok(tok, prompt, stop=("The capital",))
    deltas = []
    hit = None
    for tid in ids:
        # "The capital" appears at the very start: stop there
        hit = d.add([tid])
        deltas.append(d.delta(hit is not None))
        if hit:
            break
    assert hit == "The capital" and d.text == "" and "".join(deltas) == ""

    d = _detok(tok, prompt, stop=("The capitol",))
    streamed = ""
    for tid in ids:
        assert d.add([tid]) is None
        streamed += d.delta(False)
    assert streamed == text[:len(text) - len("The capitol") + 1], "the last len(stop)-1 chars are held back"
    assert streamed + d.delta(True) == text
    assert d.delta(True) == ""


def test_without_stop_strings_nothing_is_held_back(tok, prompt):
    ids = tok.encode(ENGLISH)
    d = _detok(tok, prompt)
    emitted = ""
    for tid in ids:
        before = d.text
        d.add([tid])
        delta = d.delta(False)
        assert delta == d.text[len(before):]
        emitted += delta
    assert emitted == ENGLISH
