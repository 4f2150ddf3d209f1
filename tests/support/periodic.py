"""Helpers for the periodic-task tests that run real processes against Redis (db 5)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/5"
"""This work's Redis database; tests use unique key names in it and delete them."""


def assert_each_tick_once(ticks: list[str], at_least: int) -> None:
    """Every tick appears once, and the ticks are one second apart with none missing."""
    counts = Counter(ticks)
    assert all(n == 1 for n in counts.values()), f"ticks sent more than once: {counts}"
    moments = sorted(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in counts)
    assert len(moments) >= at_least, f"only {len(moments)} ticks: {moments}"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(moments)]
    assert set(gaps) == {1.0}, f"ticks missing between {moments[0]} and {moments[-1]}: {gaps}"


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 60.0, logs: Callable[[], str] = lambda: ""
) -> None:
    """Hang guard only: poll ``check`` until true, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.05)


def records(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def delete_keys(client: redis.Redis, *patterns: str, also: frozenset[str] = frozenset()) -> None:
    """Delete keys matching ``patterns`` and any key that contains one of ``also``."""
    doomed: set[bytes] = set()
    for pattern in patterns:
        doomed.update(client.scan_iter(match=pattern, count=1000))
    if also:
        for key in client.scan_iter(count=1000):
            text = key.decode(errors="replace")
            if any(token in text for token in also):
                doomed.add(key)
    if doomed:
        client.delete(*doomed)


class Processes:
    """Subprocesses of ``python -m machinery_aio``; whatever is left is killed at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "machinery_aio", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append((proc, log))
        return proc

    def logs(self) -> str:
        parts = []
        for proc, log in self.running:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- pid {proc.pid} ({log.name}), exit {proc.poll()}:\n{text[-3000:]}")
        return "\n".join(parts)

    def stop_all(self, timeout: float = 60.0) -> None:
        """SIGTERM every process, then require a clean exit (status 0)."""
        for proc, _ in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"pid {proc.pid} did not stop on SIGTERM\n{self.logs()}") from None
        codes = [proc.returncode for proc, _ in self.running]
        assert codes == [0] * len(codes), f"exit statuses {codes}\n{self.logs()}"

    def kill_all(self) -> None:
        for proc, _ in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def app_env(unique: str, **settings: str) -> dict[str, str]:
    """Environment for ``tests.apps.periodic_app`` (see its docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTEST_")}
    env.update(
        {
            "PTEST_APP_NAME": unique,
            "PTEST_DEFAULT_QUEUE": f"{unique}_tasks",
            "PTEST_REDIS_DELAYED_TASKS_KEY": f"{unique}_delayed",
            "PTEST_NAME": f"{unique}-job",
            "PTEST_SPEC": "* * * * * *",
            "PTEST_KIND": "task",
            "PTEST_RECORD": REDIS_URL,
            "PTEST_PREFIX": f"ptest:{unique}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"PTEST_{k.upper()}": v for k, v in settings.items()})
    return env
