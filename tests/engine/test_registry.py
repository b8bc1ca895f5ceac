"""The shared name -> class registry behind KV storages, plugins, proposers and verifiers."""

from __future__ import annotations

import pytest

from engine.registry import Registry


def test_register_get_and_names():
    reg: Registry[type] = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and reg.get("b") is B
    assert A.name == "a"
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_unknown_name_is_a_value_error_listing_the_known_ones():
    reg: Registry[type] = Registry("widget")
    reg.register("only")(type("Only", (), {}))
    with pytest.raises(ValueError, match=r"unknown widget 'other'; known: only"):
        reg.get("other")


def test_a_taken_name_cannot_be_given_to_another_class_but_the_same_class_may_repeat():
    reg: Registry[type] = Registry("widget")
    first = reg.register("x")(type("First", (), {}))
    assert reg.register("x")(first) is first
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(type("Second", (), {}))
    assert reg.get("x") is first
