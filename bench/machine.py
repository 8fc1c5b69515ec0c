"""What the benchmarks print about the machine: CPUs, memory, load average, date."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def load() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` has them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def line() -> str:
    return (
        f"{platform.node()} · {os.cpu_count()} CPUs · {memory_gib():.0f} GiB · "
        f"Python {platform.python_version()} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · "
        f"load {load()}"
    )
