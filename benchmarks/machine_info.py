"""What every benchmark records about the run (imported by the bench scripts, which run as
``python benchmarks/<name>.py``, so this folder is on the import path).

Each results file carries ``run_info(...)`` taken at the start, completed by ``finish(...)`` at
the end: the commit measured (and whether the tree had uncommitted changes), the date, the load
average at the start and the end (the machine is shared: a figure without its load is not
comparable), the machine, and every setting that differs from the defaults.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


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
        "load_average": load_average(),
        **extra,
    }


def commit() -> dict:
    """The checkout the benchmark runs from: ``commit`` (sha), ``dirty`` (tracked files changed)
    and ``dirty_files`` (which: the first 50)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        # Untracked files and results files do not count: they do not alter what is measured.
        changed = [
            path
            for path in (line[3:] for line in git("status", "--porcelain", "-uno").splitlines())
            if not path.startswith("benchmarks/results/")
        ]
        return {
            "commit": git("rev-parse", "HEAD").strip(),
            "dirty": bool(changed),
            "dirty_files": changed[:50],
        }
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "dirty_files": []}


def non_default(settings: BaseModel) -> dict:
    """The fields of ``settings`` whose value differs from the field's default (JSON values)."""
    fields = type(settings).model_fields
    values = settings.model_dump(mode="json")
    out = {}
    for name, info in fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, Path):
            default = str(default)
        if values.get(name) != default:
            out[name] = values.get(name)
    return out


def run_info(
    settings: BaseModel | Mapping[str, object] | None = None,
    product: Mapping[str, object] | None = None,
    **extra: object,
) -> dict:
    """Commit, date, machine (load now) and the non-default settings, at the start of a run.

    ``settings``: the benchmark's own options (a settings model: only the fields off their
    defaults are kept; a mapping: kept as given). ``product``: settings of the product measured
    that differ from its defaults (environment variables given to the services, constructor
    arguments), each with the reason where it is not obvious.
    """
    own = non_default(settings) if isinstance(settings, BaseModel) else dict(settings or {})
    return {
        **commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(**extra),
        "load_average_start": load_average(),
        "non_default_settings": {"benchmark": own, "product": dict(product or {})},
    }


def finish(info: dict) -> dict:
    """``info`` with the load average and the date at the end of the run."""
    return {
        **info,
        "load_average_end": load_average(),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
