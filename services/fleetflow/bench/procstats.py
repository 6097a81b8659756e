"""CPU time and peak memory of processes, read from /proc (Linux)."""

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float
    peak_rss_bytes: int
    rss_bytes: int = 0


def sample(pid: int) -> ProcessSample:
    """User + system CPU seconds so far, the peak resident set (VmHWM) and the current one (VmRSS) of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    memory = {"VmHWM:": 0, "VmRSS:": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(maxsplit=1)[0] if line else ""
        if key in memory:
            memory[key] = int(line.split()[1]) * 1024
    return ProcessSample(cpu, memory["VmHWM:"], memory["VmRSS:"])


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list; 0.0 for an empty list."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]
