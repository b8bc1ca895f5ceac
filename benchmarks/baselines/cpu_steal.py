"""How much CPU time a hypervisor gave to other guests over a stretch of time (steal), from /proc/stat.

On a shared virtual machine this, more than the load average, says whether a timing can be trusted: a
run measured while a third of the CPU was stolen is about a third slower for no fault of the code. The
baselines run this in their own environments around their timed windows, as the native run does around
its own, so it depends on nothing but the standard library."""

from __future__ import annotations

from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice
_STEAL = 7


def cpu_ticks(stat: Path = PROC_STAT) -> list[int] | None:
    """The machine's CPU time so far, all cores, in ticks by kind, or None where /proc/stat has none."""
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("cpu "):
                return [int(v) for v in line.split()[1:]]
    except (OSError, ValueError):
        return None
    return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the CPU time between two cpu_ticks() that was stolen, 0..1; None without the figures."""
    if before is None or after is None or min(len(before), len(after)) <= _STEAL:
        return None
    # guest and guest_nice, after steal, are already counted inside user and nice
    delta = [a - b for a, b in zip(after[:_STEAL + 1], before[:_STEAL + 1], strict=True)]
    total = sum(delta)
    return delta[_STEAL] / total if total > 0 else 0.0
