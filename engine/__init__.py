"""Tessera inference engine."""
