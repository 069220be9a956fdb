"""How noisy a latency table's measurement was, and whether the table can be trusted.

A table timed while other work loads the machine is wrong in a way nothing inside it shows when
the load is steady: every round is slowed alike. So two things are recorded beside the rounds'
own spread (``max_round_load``, :mod:`lana.latency`):

* ``others_cores``: the CPU time that *other* processes used while the table was timed, in cores
  (Linux ``/proc/stat`` minus this process's own ``/proc/self/stat``). A quiet machine reads
  ~0.0-0.1; one busy loop reads ~1.0, whatever the load's timing.
* ``teacher_drift_pct``: the teacher is timed whole in every round, spread from the table's start
  to its end; the spread of its per-round medians over the kept rounds (max / min - 1) says
  whether the machine's speed changed while the numbers were taken.

A table whose figures pass a stated threshold is re-timed (:data:`MAX_RETIMES`), and if it stays
noisy it is stored with ``noisy = True`` and its figures; planners warn when they use it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["DRIFT_LIMIT_PCT", "MAX_RETIMES", "OTHERS_CORES_LIMIT", "CpuProbe", "assess", "describe"]

# Thresholds, from this project's 2-core machine (resnet10t at 32 px, batch 8, 1 thread, 3 rounds,
# /tmp probe of 2026-12-02): quiet, other processes used 0.00-0.02 cores and the teacher's
# per-round medians spread 0.7-5.9%; beside another session's test run ~1.0 core; with two busy
# loops 1.47 cores and 86% (tests/test_latency_noise.py provokes it).
OTHERS_CORES_LIMIT = 0.3
DRIFT_LIMIT_PCT = 10.0
MAX_RETIMES = 1  # a noisy table is timed once more at most (tables take minutes)


def _busy_jiffies() -> int | None:
    """Busy CPU time of the whole machine since boot, in clock ticks (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _own_jiffies() -> int | None:
    """This process's CPU time (all its threads), in clock ticks."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class CpuProbe:
    """A snapshot of the machine's and this process's CPU time; ``others_cores()`` since it."""

    wall: float
    busy: int | None
    own: int | None

    @classmethod
    def start(cls) -> CpuProbe:
        return cls(time.monotonic(), _busy_jiffies(), _own_jiffies())

    def others_cores(self) -> float | None:
        """Mean cores that other processes kept busy since the snapshot (None where unknown)."""
        busy, own, wall = _busy_jiffies(), _own_jiffies(), time.monotonic() - self.wall
        if None in (busy, own, self.busy, self.own) or wall <= 0:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, ((busy - self.busy) - (own - self.own)) / ticks / wall)


def assess(teacher_round_ms: list[float], others_cores: float | None) -> dict:
    """The noise record of one timing attempt, with ``noisy`` and the reasons.

    Args:
        teacher_round_ms: the teacher's median in each kept round, in time order.
        others_cores: :meth:`CpuProbe.others_cores` over the attempt.
    """
    drift = 100.0 * (max(teacher_round_ms) / min(teacher_round_ms) - 1) if teacher_round_ms else 0.0
    reasons = []
    if others_cores is not None and others_cores > OTHERS_CORES_LIMIT:
        reasons.append(f"other processes used {others_cores:.2f} cores (limit {OTHERS_CORES_LIMIT})")
    if drift > DRIFT_LIMIT_PCT:
        reasons.append(f"the teacher's time drifted {drift:.1f}% between rounds (limit {DRIFT_LIMIT_PCT:g}%)")
    return {
        "others_cores": None if others_cores is None else round(others_cores, 3),
        "teacher_drift_pct": round(drift, 2),
        "noisy": bool(reasons),
        "reason": "; ".join(reasons),
    }


def describe(name: str, attrs: dict) -> str | None:
    """A warning for a table stored as noisy (None for a trusted one)."""
    if not attrs.get("noisy"):
        return None
    noise = (attrs.get("fingerprint") or {}).get("noise") or {}
    reason = noise.get("reason") or "its measurement was noisy"
    return (
        f"latency table {name} is flagged noisy ({reason}); plans made on it may miss their budget: "
        f"re-time it on a quiet machine with `lana latency LIB --retime {name}`"
    )
