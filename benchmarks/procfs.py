"""CPU time and memory of a process and its descendants, read from Linux's /proc (stdlib only)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (prefork pools, dramatiq's worker processes...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (``beam.smp`` for RabbitMQ)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (and their reaped children)."""
    total = 0
    own = 0.0
    for pid in pids:
        if pid == os.getpid():  # finer than /proc's clock ticks
            usage = resource.getrusage(resource.RUSAGE_SELF)
            own = usage.ru_utime + usage.ru_stime
            continue
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat (index 11-14 after the name)
            total += sum(int(f) for f in fields[11:15])
    return own + total / _TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pids: list[int]) -> float:
    """The sum of each process's peak resident set (VmHWM), in MiB."""
    return sum(_status_kib(pid, "VmHWM:") for pid in pids) / 1024


def rss_mib(pids: list[int]) -> float:
    """The sum of each process's current resident set (VmRSS), in MiB."""
    return sum(_status_kib(pid, "VmRSS:") for pid in pids) / 1024
