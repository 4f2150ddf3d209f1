"""``machinery-aio worker --processes N``: a parent that keeps N worker processes running.

Each child is ``machinery-aio worker`` with the same command line (``--concurrency`` is
per child; a child ignores ``--processes``, knowing itself by ``MACHINERY_AIO_CHILD_INDEX``
in its environment), in a process group of its own so that a Ctrl-C in a terminal reaches only the
parent. A child that exits while the parent is not stopping is started again after a
back-off that doubles (1 s up to 30 s) while children keep dying within 10 s of their
start. SIGTERM or SIGINT to the parent is passed on as SIGTERM to every child (each stops
gracefully); the parent exits 0 once none is left. A second signal is passed on too, so
the children stop at once. On Linux a child also gets SIGTERM if the parent dies.

With ``reload`` (``--reload``, for development) it watches directories with watchfiles and,
when a Python file there changes, stops every child gracefully and starts them again.
``child_env`` and ``on_exit`` let ``--metrics-port`` give the children a directory for
their metrics and drop a dead child's gauges.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from .log import get_logger

__all__ = ["CHILD_INDEX", "Supervisor", "parse_processes"]

logger = get_logger("machinery_aio.supervisor")

CHILD_INDEX = "MACHINERY_AIO_CHILD_INDEX"
"""Set in each child's environment: its slot, 0 to N-1."""
QUICK_DEATH = 10.0
"""A child that dies within this many seconds of its start makes the next back-off longer."""


def parse_processes(text: str) -> int:
    """``--processes``: a whole number of 1 or more, or ``auto`` (the number of cores)."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"--processes must be a whole number or 'auto', got {text!r}") from None
    if count < 1:
        raise ValueError(f"--processes must be 1 or more, got {count}")
    return count


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Slot:
    __slots__ = ("backoff", "index", "process", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = 0.0


class Supervisor:
    """Runs ``processes`` copies of ``python -m machinery_aio <child_args>``.

    Args:
        child_args: the command line of one child (``worker ...``).
        processes: how many children to keep running.
        backoff: (first, longest) seconds before a child that died is started again.
        reload: directories to watch; a changed Python file there restarts every child.
        child_env: environment variables added to each child's.
        on_exit: called with a child's process id once it has exited.
    """

    def __init__(
        self,
        child_args: Sequence[str],
        processes: int,
        backoff: tuple[float, float] = (1.0, 30.0),
        reload: Sequence[str] = (),
        child_env: Mapping[str, str] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be 1 or more")
        self.child_args = list(child_args)
        self.slots = [_Slot(i) for i in range(processes)]
        self.backoff = backoff
        self.reload = list(reload)
        self.child_env = dict(child_env or {})
        self.on_exit = on_exit
        self._reloading = False
        self._stopping = False
        self._signals = 0
        self._wake = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        """The running children's process ids."""
        return [s.process.pid for s in self.slots if s.process is not None and s.process.returncode is None]

    async def run(self) -> int:
        """Start the children and keep them running until SIGTERM/SIGINT; returns 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        logger.info("supervisor %d: starting %d worker processes", os.getpid(), len(self.slots))
        watcher = asyncio.create_task(self._watch()) if self.reload else None
        try:
            keepers = [asyncio.create_task(self._keep(slot)) for slot in self.slots]
            await asyncio.gather(*keepers)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        logger.info("supervisor %d: every worker process has stopped", os.getpid())
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        first = not self._stopping
        self._stopping = True
        self._wake.set()
        if first:
            logger.info("%s: stopping %d worker processes gracefully", sig.name, len(self.pids))
        else:
            logger.warning("second %s: the worker processes stop at once", sig.name)
        self._signal_children(signal.SIGTERM)

    async def _watch(self) -> None:
        """Restart every child when a Python file under ``self.reload`` changes."""
        from watchfiles import PythonFilter, awatch

        async for changes in awatch(*self.reload, watch_filter=PythonFilter()):
            if self._stopping:
                return
            names = sorted({path for _, path in changes})
            logger.warning("changed: %s; restarting the worker processes", ", ".join(names[:5]))
            self._reloading = True
            self._signal_children(signal.SIGTERM)
            for slot in self.slots:
                while slot.process is not None and slot.process.returncode is None:
                    await slot.process.wait()
            await asyncio.sleep(0.1)  # let the keepers start the new children
            self._reloading = False

    def _signal_children(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                try:
                    process.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def _start(self, slot: _Slot) -> asyncio.subprocess.Process:
        env = {**os.environ, **self.child_env, CHILD_INDEX: str(slot.index)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "machinery_aio",
            *self.child_args,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        slot.process = process
        slot.started = time.monotonic()
        if self._stopping:  # a signal came while it was starting
            process.send_signal(signal.SIGTERM)
        return process

    async def _keep(self, slot: _Slot) -> None:
        first, longest = self.backoff
        while not self._stopping:
            process = await self._start(slot)
            logger.info("worker process %d started (slot %d)", process.pid, slot.index)
            code = await process.wait()
            self._exited(process.pid)
            if self._stopping:
                break
            if self._reloading:
                continue
            lived = time.monotonic() - slot.started
            slot.backoff = min(longest, slot.backoff * 2 or first) if lived < QUICK_DEATH else first
            logger.error(
                "worker process %d exited with %s after %.1f s; starting another in %.1f s",
                process.pid,
                _describe(code),
                lived,
                slot.backoff,
            )
            try:
                await asyncio.wait_for(self._wake.wait(), slot.backoff)
            except TimeoutError:
                pass
        process_left = slot.process
        if process_left is not None and process_left.returncode is None:
            await process_left.wait()
            self._exited(process_left.pid)

    def _exited(self, pid: int) -> None:
        if self.on_exit is not None:
            try:
                self.on_exit(pid)
            except Exception:
                logger.exception("after worker process %d exited", pid)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
