"""Helpers shared by the contract suite and the driver tests: polling, subprocesses."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


async def eventually(
    check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """Call ``check`` (plain or async) until it returns something truthy, and return that.

    A hang guard, not a timing assertion: fails saying ``what`` did not happen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


async def run_python(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    """``python *args`` from the project root; returns (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_left_open(env: dict[str, str], *, close: bool) -> tuple[int, str, str]:
    """Run tests/support/left_open.py (send one task, maybe never close the server)."""
    args = ["-m", "tests.support.left_open", *(["--close"] if close else [])]
    return await run_python(*args, env=env)
