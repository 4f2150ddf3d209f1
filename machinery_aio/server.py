"""Server: the task registry, sending tasks and workflows, and making workers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import tzinfo
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from . import gotime
from .config import Config
from .context import TaskContext
from .drivers import create_backend, create_broker, create_lock
from .drivers.backend import ResultBackend
from .drivers.broker import Broker
from .drivers.lock import Lock
from .errors import TaskNotRegisteredError
from .log import get_logger
from .periodic import MissedPolicy, PeriodicEntry, Scheduler
from .result import AsyncResult, ChainAsyncResult, ChordAsyncResult
from .signature import Signature, new_task_uuid
from .state import State, TaskState
from .tasks import Task, TaskFunction
from .worker import Worker
from .workflow import Chain, Chord, Group

__all__ = ["Server"]

logger = get_logger("machinery_aio.server")

P = ParamSpec("P")
R = TypeVar("R")
PublishHook = Callable[[Signature], Any]


class BackgroundService(Protocol):
    """Something a worker runs alongside consuming (the periodic scheduler)."""

    async def run(self) -> None: ...


class TaskDecorator(Protocol):
    """What ``@server.task(name)`` returns: turns a function into a :class:`Task`."""

    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], R]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class Server:
    """Holds the configuration, broker, backend and registered tasks; sends work.

    ``Server(Config())`` uses the embedded ``memory://`` broker and backend.
    Broker, backend and lock objects can also be passed in directly.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        backend: ResultBackend | None = None,
        lock: Lock | None = None,
    ) -> None:
        self.config = config if config is not None else Config()
        self.broker = broker if broker is not None else create_broker(self.config)
        self.backend = backend if backend is not None else create_backend(self.config)
        self._lock = lock
        self.registry: dict[str, TaskFunction] = {}
        self._pre_publish: list[PublishHook] = []
        self._connected = False
        self._connecting: asyncio.Lock | None = None
        self._scheduler: BackgroundService | None = None

    # -- connections -------------------------------------------------------------

    @property
    def lock(self) -> Lock:
        """The lock for periodic tasks (created from the config on first use)."""
        if self._lock is None:
            self._lock = create_lock(self.config)
        return self._lock

    async def connect(self) -> None:
        """Connect the broker and backend; sending connects on demand too."""
        if self._connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connected:
                return
            await self.broker.connect()
            await self.backend.connect()
            self._connected = True

    async def close(self) -> None:
        """Close the broker, backend and lock connections."""
        self._connected = False
        await self.broker.close()
        await self.backend.close()
        if self._lock is not None:
            await self._lock.close()

    async def __aenter__(self) -> Server:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- registry ----------------------------------------------------------------

    def register_task(
        self, name: str, fn: Callable[..., Any], *, time_limit: float | None = None
    ) -> TaskFunction:
        """Register ``fn`` under ``name``; a later registration of the same name replaces it."""
        function = TaskFunction(name, fn, time_limit=time_limit)
        self.registry[name] = function
        return function

    def register_tasks(self, tasks: Mapping[str, Callable[..., Any]]) -> None:
        """Register several tasks: ``{"add": add, "multiply": multiply}``."""
        for name, fn in tasks.items():
            self.register_task(name, fn)

    def task(
        self, name: str | None = None, *, time_limit: float | None = None, **options: Any
    ) -> TaskDecorator:
        """Decorator: register the function and return a typed :class:`Task` handle.

        ``name`` defaults to the function's name; ``options`` are defaults for
        every call (as :meth:`Task.with_options`).
        """

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or str(getattr(fn, "__name__", ""))
            function = self.register_task(task_name, fn, time_limit=time_limit)
            handle: Task[Any, Any] = Task(self, function)
            return handle.with_options(**options) if options else handle

        return decorate

    def is_task_registered(self, name: str) -> bool:
        return name in self.registry

    def get_registered_task(self, name: str) -> TaskFunction:
        try:
            return self.registry[name]
        except KeyError:
            raise TaskNotRegisteredError(f"task {name!r} is not registered") from None

    def get_registered_task_names(self) -> list[str]:
        return sorted(self.registry)

    def set_pre_publish_handler(self, handler: PublishHook) -> None:
        """Run ``handler(signature)`` (sync or async) right before every publish.

        Go's ``Server.SetPreTaskHandler``; here it runs for group members and
        callbacks too, not only for ``send_task``.
        """
        self._pre_publish.append(handler)

    set_pre_task_handler = set_pre_publish_handler

    # -- sending -----------------------------------------------------------------

    def _prepare(self, signature: Signature) -> None:
        if not isinstance(signature, Signature):
            raise TypeError(f"expected a Signature, got {type(signature).__name__}")
        if not signature.name:
            raise ValueError("a Signature needs a task name")
        if not signature.uuid:
            signature.uuid = new_task_uuid()
        if signature.headers is None:
            signature.headers = {}

    async def _run_pre_publish(self, signature: Signature) -> None:
        for hook in self._pre_publish:
            result = hook(signature)
            if inspect.isawaitable(result):
                await result

    async def send_task(self, signature: Signature) -> AsyncResult[Any]:
        """Record PENDING and publish; returns the AsyncResult (``signature.uuid`` is set)."""
        self._prepare(signature)
        await self.connect()
        pending = TaskState.new(signature, State.PENDING)
        written = self.backend.set_states_soon((pending,))  # with the publish, where safe
        if written is None:
            await self.backend.set_state(pending)
        await self._run_pre_publish(signature)
        await self.broker.publish(signature)
        if written is not None:
            await written
        return AsyncResult(signature, self.backend)

    async def send_tasks(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many tasks with batched state writes and publishes."""
        sigs = list(signatures)
        for sig in sigs:
            self._prepare(sig)
        await self.connect()
        created = gotime.now()  # one creation time for the batch
        await self.backend.set_states([TaskState.new(s, State.PENDING, created_at=created) for s in sigs])
        for sig in sigs:
            await self._run_pre_publish(sig)
        await self.broker.publish_many(sigs)
        return [AsyncResult(sig, self.backend) for sig in sigs]

    async def republish(self, signature: Signature) -> None:
        """Publish again with the same UUID (retries, early ETAs); no PENDING is written."""
        await self._run_pre_publish(signature)
        await self.broker.publish(signature)

    async def send_group(self, group: Group, send_concurrency: int = 0) -> list[AsyncResult[Any]]:
        """Write the GroupMeta and PENDING states, then publish every member.

        ``send_concurrency`` caps publishes in flight (0: all at once, batched).
        """
        if not isinstance(group, Group):
            raise TypeError(f"expected a Group, got {type(group).__name__}")
        if send_concurrency < 0:
            raise ValueError("send_concurrency must be 0 (unlimited) or more")
        for sig in group.tasks:
            self._prepare(sig)
        await self.connect()
        await self.backend.init_group(group.group_uuid, group.task_uuids())
        await self.backend.set_states([TaskState.new(s, State.PENDING) for s in group.tasks])
        for sig in group.tasks:
            await self._run_pre_publish(sig)
        if send_concurrency == 0:
            await self.broker.publish_many(group.tasks)
        else:
            limit = asyncio.Semaphore(send_concurrency)

            async def publish(sig: Signature) -> None:
                async with limit:
                    await self.broker.publish(sig)

            await asyncio.gather(*(publish(sig) for sig in group.tasks))
        return [AsyncResult(sig, self.backend) for sig in group.tasks]

    async def send_chord(self, chord: Chord, send_concurrency: int = 0) -> ChordAsyncResult:
        """Send the chord's group; the last member to finish sends the callback."""
        if not isinstance(chord, Chord):
            raise TypeError(f"expected a Chord, got {type(chord).__name__}")
        if chord.callback.headers is None:
            chord.callback.headers = {}  # Go's SendChord leaves the embedded callback's Headers {}
        results = await self.send_group(chord.group, send_concurrency)
        return ChordAsyncResult(results, AsyncResult(chord.callback, self.backend))

    async def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send the chain's first link; each link sends the next when it succeeds."""
        if not isinstance(chain, Chain):
            raise TypeError(f"expected a Chain, got {type(chain).__name__}")
        await self.send_task(chain.tasks[0])
        return ChainAsyncResult([AsyncResult(sig, self.backend) for sig in chain.tasks])

    def get_async_result(self, task_uuid: str, name: str = "") -> AsyncResult[Any]:
        """An AsyncResult for a task sent elsewhere, by UUID."""
        return AsyncResult(Signature(uuid=task_uuid, name=name), self.backend)

    # -- workers -----------------------------------------------------------------

    def new_worker(
        self, tag: str = "", concurrency: int = 10, queue: str | None = None, **options: Any
    ) -> Worker:
        """A worker for ``queue`` (default queue if None); see :class:`Worker` for options."""
        return Worker(self, tag, concurrency, queue, **options)

    def new_custom_queue_worker(self, tag: str, concurrency: int, queue: str, **options: Any) -> Worker:
        """Go's ``NewCustomQueueWorker``."""
        return Worker(self, tag, concurrency, queue, **options)

    # -- periodic tasks (Go's RegisterPeriodic*) -------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        """The periodic-task scheduler (created on first use; every worker runs it)."""
        if not isinstance(self._scheduler, Scheduler):
            self._scheduler = Scheduler(self)
        return self._scheduler

    def register_periodic_task(
        self,
        spec: str,
        name: str,
        signature: Signature,
        *,
        timezone: str | tzinfo | None = None,
        missed: MissedPolicy = "skip",
    ) -> PeriodicEntry:
        """Send a fresh copy of ``signature`` (new UUID) on every tick of ``spec``.

        ``spec``: 5 cron fields, 6 with seconds first, ``@daily``, ``@every 30s``
        ... read in ``timezone`` (UTC by default). A bad spec raises ValueError.
        Each tick is sent once however many workers run; ``missed`` says what
        happens to a tick no scheduler could send in time (docs/periodic.md).
        """
        return self.scheduler.register(
            PeriodicEntry.create("task", spec, name, (signature,), timezone=timezone, missed=missed)
        )

    def register_periodic_group(
        self,
        spec: str,
        name: str,
        *signatures: Signature,
        send_concurrency: int = 0,
        timezone: str | tzinfo | None = None,
        missed: MissedPolicy = "skip",
    ) -> PeriodicEntry:
        """Send a fresh group of copies of ``signatures`` on every tick of ``spec``."""
        return self.scheduler.register(
            PeriodicEntry.create(
                "group",
                spec,
                name,
                signatures,
                send_concurrency=send_concurrency,
                timezone=timezone,
                missed=missed,
            )
        )

    def register_periodic_chain(
        self,
        spec: str,
        name: str,
        *signatures: Signature,
        timezone: str | tzinfo | None = None,
        missed: MissedPolicy = "skip",
    ) -> PeriodicEntry:
        """Send a fresh chain of copies of ``signatures`` on every tick of ``spec``."""
        return self.scheduler.register(
            PeriodicEntry.create("chain", spec, name, signatures, timezone=timezone, missed=missed)
        )

    def register_periodic_chord(
        self,
        spec: str,
        name: str,
        callback: Signature,
        *signatures: Signature,
        send_concurrency: int = 0,
        timezone: str | tzinfo | None = None,
        missed: MissedPolicy = "skip",
    ) -> PeriodicEntry:
        """Send a fresh chord (``signatures``, then ``callback``) on every tick of ``spec``.

        The callback comes first, as in Go's ``RegisterPeriodicChord``.
        """
        return self.scheduler.register(
            PeriodicEntry.create(
                "chord",
                spec,
                name,
                signatures,
                callback=callback,
                send_concurrency=send_concurrency,
                timezone=timezone,
                missed=missed,
            )
        )

    async def describe_periodic(self) -> list[dict[str, Any]]:
        """The registered schedules and their next run times."""
        if not isinstance(self._scheduler, Scheduler):
            return []
        return self._scheduler.describe()

    def scheduler_for_worker(self) -> BackgroundService | None:
        """The periodic-task scheduler a worker should run, if any task is periodic."""
        return self._scheduler

    def __repr__(self) -> str:
        return f"<Server broker={self.broker.describe()} backend={self.backend.describe()}>"
