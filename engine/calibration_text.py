"""Text that ships with Python (`pydoc_data.topics`, the reference manual's help topics), split by topic
into a calibration set and a held-out set that never share a topic: calibration searches tune on the
first, fidelity is reported on the second."""

from __future__ import annotations

import hashlib


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def split_of(topic: str) -> str:
    """'calibration' or 'heldout', fixed by a hash of the topic name (stable across Python versions that
    add or drop topics, unlike an index-based split)."""
    digest = hashlib.sha256(topic.encode()).digest()[0]
    return "calibration" if digest % 3 == 0 else "heldout"


def texts(split: str, min_chars: int = 2000) -> list[tuple[str, str]]:
    """(topic, text) of one split, longest first, keeping texts of at least `min_chars` characters."""
    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")
    chosen = [(t, s) for t, s in _topics().items() if split_of(t) == split and len(s) >= min_chars]
    chosen.sort(key=lambda ts: (-len(ts[1]), ts[0]))
    return chosen


def token_windows(tokenizer, split: str, count: int, length: int) -> list[list[int]]:
    """`count` token sequences of exactly `length` ids, each from a different topic of `split`."""
    if count < 1 or length < 2:
        raise ValueError("need count >= 1 and length >= 2")
    out = []
    for _, text in texts(split):
        ids = tokenizer.encode(text)
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == count:
            return out
    raise ValueError(f"the {split} split has only {len(out)} topics of at least {length} tokens; asked for {count}")
