"""Run ``python -m machinery_aio ...`` in a subprocess with its output read as it comes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import pytest

ROOT = Path(__file__).resolve().parents[2]


class CLIProcess:
    """A running ``machinery-aio`` command; stdout and stderr lines are collected as they arrive."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "machinery_aio", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Wait until a line of stdout or stderr contains ``text`` (a hang guard)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.out + self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in output: {self.out} / {self.err}")
            time.sleep(0.01)

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class StartCLI(Protocol):
    def __call__(self, *args: str, env: dict[str, str] | None = None) -> CLIProcess: ...


@pytest.fixture
def cli_process() -> Iterator[StartCLI]:
    """Start ``machinery-aio`` subprocesses that are killed after the test."""
    started: list[CLIProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CLIProcess:
        process = CLIProcess(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
