"""Proposers, selected by name: `ngram`, `suffix`, `draft`."""

from plugins.spec_decode.proposers import draft, ngram, suffix  # noqa: F401  (registration)
from plugins.spec_decode.proposers.registry import get_proposer_class, proposer_names

__all__ = ["get_proposer_class", "proposer_names"]
