"""Helpers for testing applications that use machinery-aio (the pytest plugin builds on them).

server = testing.memory_server()          # isolated memory:// broker and backend
async with testing.running_worker(server) as worker:
    result = await add.delay(1, 2)
    assert await result.get(timeout=5) == 3
    await testing.wait_idle(worker)      # nothing waiting, nothing running

async with testing.pointed_at(my_server):  # the app's own Server, on memory:// for the block
    with testing.record_sent(my_server) as sent:
        await handler_that_sends()
    sent.assert_sent("add", 1, 2)
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .config import Config, ConfigError
from .drivers import create_backend, create_broker, technology_of
from .middleware import Middleware
from .server import Server
from .signature import Signature
from .worker import Worker

__all__ = [
    "SentTasks",
    "load_app",
    "memory_server",
    "pointed_at",
    "record_sent",
    "running_worker",
    "wait_idle",
]


def memory_server(name: str | None = None, **config: Any) -> Server:
    """A Server on its own ``memory://`` broker, backend and lock (a fresh name by default)."""
    store = name or f"test-{uuid.uuid4().hex[:12]}"
    url = f"memory://{store}"
    return Server(Config(broker=url, result_backend=url, lock=url, **config))


@asynccontextmanager
async def running_worker(server: Server, concurrency: int = 10, **options: Any) -> AsyncIterator[Worker]:
    """Run a worker for the duration of the block; it is stopped (gracefully) afterwards."""
    async with server.new_worker("test-worker", concurrency, **options) as worker:
        yield worker


async def _busy(worker: Worker) -> bool:
    """True while ``worker`` runs a task or its queue holds a task (delayed ones included,
    where the broker can list them)."""
    if worker.running_tasks or await worker.broker.count_pending(worker.queue):
        return True
    if not worker.broker.capabilities.list_delayed:
        return False
    return any(s.routing_key == worker.queue for s in await worker.broker.get_delayed_tasks())


async def wait_idle(worker: Worker, timeout: float = 10.0, settle: float = 0.05) -> None:
    """Wait until ``worker`` has run no task and its queue held none for ``settle`` seconds
    (tasks waiting for an ETA or a retry count as held). Raises TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if not await _busy(worker):
            quiet_since = quiet_since or now
            if now - quiet_since >= settle:
                return
        else:
            quiet_since = None
        if now > deadline:
            raise TimeoutError(
                f"worker still has {worker.running_tasks} running tasks, and its queue "
                f"{worker.queue!r} is not empty, after {timeout} s"
            )
        await asyncio.sleep(0.01)


# -- the application's own server --------------------------------------------------------


def load_app(spec: str, search: str | None = None) -> Server:
    """The Server named by ``"package.module:attribute"`` (a Server, or a function that
    returns one). ``search`` is a folder tried for the import too (a project's root)."""
    module_name, colon, attribute = spec.strip().partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"machinery_app must look like 'package.module:server', got {spec!r}")
    if search is not None and search not in sys.path:
        sys.path.append(search)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"machinery_app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"machinery_app {spec!r}: {module_name!r} has no {attribute!r}") from None
    if callable(found) and not isinstance(found, Server) and not inspect.iscoroutinefunction(found):
        found = found()  # a factory
    if not isinstance(found, Server):
        raise ConfigError(f"machinery_app {spec!r} is a {type(found).__name__}, not a machinery_aio Server")
    return found


def _test_urls(broker: str | None, backend: str | None) -> tuple[str, str, str]:
    """(broker, backend, lock) URLs: a memory:// store of the test's own by default; a given
    broker's own backend when its technology has one."""
    store = f"memory://test-{uuid.uuid4().hex[:12]}"
    if broker is None:
        return store, backend or store, store
    if backend is None:
        tech = technology_of(broker)
        backend = broker if tech is not None and tech.backend else store
    return broker, backend, ""


@asynccontextmanager
async def pointed_at(
    server: Server, broker: str | None = None, backend: str | None = None
) -> AsyncIterator[Server]:
    """Point ``server`` (its tasks, its ``delay()`` handles, its workers) at ``broker`` and
    ``backend`` for the block: by default a ``memory://`` store of its own. Afterwards the
    block's connections are closed and the server's own drivers are back."""
    broker_url, backend_url, lock_url = _test_urls(broker, backend)
    config = server.config.model_copy(
        update={"broker": broker_url, "result_backend": backend_url, "lock": lock_url}
    )
    config._source = None  # a YAML reload must not put the app's URLs back during the test
    replaced = server.swap_drivers(config, create_broker(config), create_backend(config))
    try:
        yield server
    finally:
        try:
            await server.close()
        finally:
            server.swap_drivers(*replaced)


# -- what was sent -----------------------------------------------------------------------


class SentTasks:
    """Every signature published while recording, as it was sent: sends, group members,
    chain links and callbacks, and retries (a retry is the same UUID sent again)."""

    def __init__(self) -> None:
        self.signatures: list[Signature] = []

    def __len__(self) -> int:
        return len(self.signatures)

    def __iter__(self) -> Iterator[Signature]:
        return iter(self.signatures)

    def names(self) -> list[str]:
        """The task names sent, in order."""
        return [s.name for s in self.signatures]

    def named(self, name: str) -> list[Signature]:
        """The signatures of task ``name``, in order."""
        return [s for s in self.signatures if s.name == name]

    def assert_sent(self, name: str, *args: Any, times: int | None = None) -> Signature:
        """Assert ``name`` was sent (with exactly these Python argument values, if any are
        given; ``times``: that many times); returns the last such signature."""
        found = self.named(name)
        if args:
            found = [s for s in found if s.python_args() == list(args)]
        wanted = _call(name, list(args)) if args else name
        if not found:
            sent = ", ".join(_call(s.name, s.python_args()) for s in self.signatures) or "nothing"
            raise AssertionError(f"{wanted} was not sent; sent: {sent}")
        if times is not None and len(found) != times:
            raise AssertionError(f"{wanted} was sent {len(found)} times, not {times}")
        return found[-1]

    def assert_not_sent(self, name: str) -> None:
        """Assert no task ``name`` was sent."""
        count = len(self.named(name))
        if count:
            raise AssertionError(f"{name} was sent {count} times")

    def clear(self) -> None:
        self.signatures.clear()


def _call(name: str, args: list[Any]) -> str:
    return f"{name}({', '.join(map(repr, args))})"


class _SentRecorder(Middleware):
    """Added once to a server; notes each publish in the recordings open at the time."""

    def __init__(self) -> None:
        self.open: list[SentTasks] = []

    async def after_publish(self, signature: Signature) -> None:
        for sent in self.open:
            sent.signatures.append(signature.model_copy(deep=True))


@contextmanager
def record_sent(server: Server) -> Iterator[SentTasks]:
    """Record what ``server`` publishes during the block. Its first use adds a middleware to
    the server that records only while a block is open."""
    recorder = next((m for m in server.middlewares if isinstance(m, _SentRecorder)), None)
    if recorder is None:
        recorder = _SentRecorder()
        server.add_middleware(recorder)
    sent = SentTasks()
    recorder.open.append(sent)
    try:
        yield sent
    finally:
        recorder.open.remove(sent)
