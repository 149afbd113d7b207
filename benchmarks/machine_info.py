"""What every benchmark records about the machine it ran on (imported by the bench scripts,
which run as ``python benchmarks/<name>.py``, so this folder is on the import path)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info(**extra: object) -> dict:
    """CPU model, cores, memory, Python, the load average now, and ``extra`` (library versions)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "mem_total_bytes": mem_kb * 1024,
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        **extra,
    }
