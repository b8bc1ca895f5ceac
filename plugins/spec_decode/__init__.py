"""Speculative decoding (n-gram / suffix / draft proposers; lossless and judge verification)."""

from plugins.spec_decode.plugin import SpecDecodePlugin

__all__ = ["SpecDecodePlugin"]
