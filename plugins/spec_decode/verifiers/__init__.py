"""Verifiers, selected by name: `lossless` (exact) and `judge` (KL-relaxed acceptance)."""

from plugins.spec_decode.verifiers import judge, lossless  # noqa: F401  (registration)
from plugins.spec_decode.verifiers.registry import create_verifier, verifier_names

__all__ = ["create_verifier", "verifier_names"]
