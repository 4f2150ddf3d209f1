"""Every example runs, started with the exact command examples/README.md gives for it: scripts
exit 0 with their answers printed, web services answer HTTP requests, and servers and workers
stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ROW = re.compile(r"^\| \[(?P<name>[^\]]+)\]\([^)]+\) \|.*\| `(?P<command>[^`]+)` \|$")


def readme_commands() -> dict[str, str]:
    """Example name -> the command the README's table gives to start it."""
    rows = (ROW.match(line) for line in (EXAMPLES / "README.md").read_text().splitlines())
    return {m.group("name").rstrip("/"): m.group("command") for m in rows if m is not None}


def test_the_readme_names_every_example_with_its_command() -> None:
    names = {p.name for p in EXAMPLES.glob("*.py")} | {
        p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    }
    assert set(readme_commands()) == names


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def command(name: str, port: int | None = None) -> Command:
    """The README's command for ``name``, run with this interpreter (``python``, ``uvicorn`` and
    ``pytest`` become ``sys.executable [-m ...]``) and ``port`` in place of the README's."""
    words = shlex.split(readme_commands()[name])
    cwd, env = ROOT, {}
    if words[0] == "cd":
        cwd, words = ROOT / words[1], words[3:]  # cd DIR && ...
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program = {"python": [sys.executable], "uvicorn": [sys.executable, "-m", "uvicorn"]}
    program["pytest"] = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    argv = [*program[words[0]], *words[1:]]
    if port is not None:
        argv[argv.index("--port") + 1] = str(port)
    return Command(argv, env, cwd)


class Running:
    """A started example; its output lines are collected as they come."""

    def __init__(self, cmd: Command) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **cmd.env}
        for name in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE", "LOCK"):
            env.pop(name, None)  # the examples' memory:// default
        self.proc = subprocess.Popen(
            cmd.argv, cwd=cmd.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Wait for a line containing ``text`` (a hang guard, not a timing check)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the output:\n{self.output}")
            time.sleep(0.02)

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        self._close()
        return code

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self._close()


@pytest.fixture
def start() -> Iterator[type[Running]]:
    started: list[Running] = []

    class Tracked(Running):
        def __init__(self, cmd: Command) -> None:
            super().__init__(cmd)
            started.append(self)

    yield Tracked
    for proc in started:
        proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(proc: Running, url: str, timeout: float = 60.0) -> httpx.Response:
    """GET ``url`` until the service answers (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered:\n{proc.output}") from None
            time.sleep(0.05)


# -- scripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("quickstart.py", ["add(1, 1) = 2", "chord multiply(add(1,1), add(5,5)) = 20"]),
        (
            "pipeline.py",
            [
                "north, cleaned and summed: 12",
                "all sources merged: 23",
                "chain failed as expected: no source called 'west'",
                "chain states: ['FAILURE', 'PENDING', 'PENDING']",
                "chord callback failed as expected: chord group_",
                "  no source called 'west' (fetch west)",
            ],
        ),
        (
            "go_interop.py",
            [
                '1. sent from Python: {"UUID":"task_',
                "2. Go's message ran on Python: 5",
                '3. stored for Go: {"TaskUUID":"task_5c1d6f3e-7f4a-4b59-9d0a-1f2e3d4c5b6a","TaskName":"add",'
                '"State":"SUCCESS","Results":[{"Type":"int64","Value":5}]',
            ],
        ),
        ("pytest_service", ["3 passed"]),
    ],
)
def test_a_script_exits_0_with_its_answers(start: type[Running], name: str, expected: list[str]) -> None:
    proc = start(command(name))
    assert proc.finish() == 0, proc.output
    for text in expected:
        assert any(line.startswith(text) or text in line for line in proc.lines), (text, proc.output)


# -- services -------------------------------------------------------------------------------------


def test_the_fastapi_service_sends_tasks_and_reports_results(start: type[Running]) -> None:
    port = free_port()
    proc = start(command("fastapi_app.py", port))
    base = f"http://127.0.0.1:{port}"
    index = wait_until_serving(proc, base + "/")
    assert index.json() == {"tasks": ["add", "slugify"], "embedded_worker": True}
    sent = httpx.post(base + "/add", params={"a": 2, "b": 3}, timeout=10).json()
    state = httpx.get(f"{base}/tasks/{sent['task_uuid']}", params={"wait": 10}, timeout=20).json()
    assert state == {"state": "SUCCESS", "result": 5, "error": ""}
    sent = httpx.post(base + "/slugify", params={"title": "Hello Big World"}, timeout=10).json()
    state = httpx.get(f"{base}/tasks/{sent['task_uuid']}", params={"wait": 10}, timeout=20).json()
    assert state["result"] == "hello-big-world"
    # uvicorn shuts the app down (lifespan: the worker stops), then re-raises the SIGTERM.
    assert proc.stop() in (0, -signal.SIGTERM), proc.output
    assert "Application shutdown complete." in proc.output


def test_the_aiohttp_service_sends_tasks_and_waits_for_them(start: type[Running]) -> None:
    port = free_port()
    proc = start(command("aiohttp_app.py", port))
    base = f"http://127.0.0.1:{port}"
    assert wait_until_serving(proc, base + "/").json() == {"tasks": ["square"]}
    answer = httpx.get(base + "/square", params={"n": 7}, timeout=20)
    assert answer.json()["result"] == 49
    failed = httpx.get(base + "/square", params={"n": -1}, timeout=20)
    assert failed.status_code == 422
    assert failed.json()["error"] == "no negative numbers, got -1"
    assert httpx.get(base + "/square", params={"n": "x"}, timeout=20).status_code == 400
    assert proc.stop() == 0, proc.output


def test_the_periodic_worker_runs_its_schedule_and_stops_on_sigterm(start: type[Running]) -> None:
    proc = start(command("periodic_worker.py"))
    proc.wait_for("heartbeat at ")
    assert proc.stop() == 0, proc.output
    assert proc.lines[-1] == "worker stopped"


def test_the_examples_pass_mypy_strict(tmp_path: Path) -> None:
    """Users copy examples: they type-check as a user's project would (no plugins)."""
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\ncache_dir = {tmp_path / 'cache'}\n")
    for cwd, targets in (
        (EXAMPLES, [p.name for p in EXAMPLES.glob("*.py")]),
        (EXAMPLES / "pytest_service", ["shop", "tests"]),
    ):
        check = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), *targets],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
