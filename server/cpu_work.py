"""Tokenizer work off the event loop when it is big enough to matter.

Rendering and tokenizing a long prompt takes milliseconds to seconds; on the loop it would stall every
other request's token stream for that long. Small inputs stay inline: a thread hop costs more than them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

OFFLOAD_CHARS = 16_384


async def tokenizer_work(size_chars: int, fn: Callable[..., T], *args) -> T:
    if size_chars > OFFLOAD_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
