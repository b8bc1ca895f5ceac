"""The steal share the throughput benchmark records beside every timed run."""

from __future__ import annotations

import sys

import pytest

from benchmarks.baselines.cpu_steal import cpu_ticks, steal_share


def _stat(tmp_path, name: str, cpu_line: str):
    path = tmp_path / name
    path.write_text(f"{cpu_line}\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 12345\n")
    return path


def test_steal_share_is_stolen_ticks_over_all_ticks_without_counting_guest_twice(tmp_path):
    before = cpu_ticks(_stat(tmp_path, "a", "cpu  100 0 50 800 10 0 0 40 30 0"))
    after = cpu_ticks(_stat(tmp_path, "b", "cpu  200 0 100 1500 10 0 0 190 60 0"))
    assert before[:8] == [100, 0, 50, 800, 10, 0, 0, 40]
    # between them: user 100, system 50, idle 700, steal 150 = 1000 ticks, 150 of them stolen; the 30
    # guest ticks are already inside user
    assert steal_share(before, after) == pytest.approx(0.15)
    assert steal_share(before, before) == 0.0


def test_no_figures_give_none(tmp_path):
    assert cpu_ticks(tmp_path / "missing") is None
    assert cpu_ticks(_stat(tmp_path, "bad", "cpu  1 2 x")) is None
    old_kernel = cpu_ticks(_stat(tmp_path, "old", "cpu  1 2 3 4 5 6 7"))  # no steal column
    assert steal_share(old_kernel, old_kernel) is None
    assert steal_share(None, [0] * 10) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_this_machine_reports_a_share_between_zero_and_one():
    before = cpu_ticks()
    sum(i * i for i in range(200_000))
    share = steal_share(before, cpu_ticks())
    assert share is not None and 0.0 <= share <= 1.0
