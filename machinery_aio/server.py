"""Server: the configuration, the task registry and the drivers; sends work and makes workers.

The Server puts the pieces together: a :class:`~.publisher.Publisher` sends,
:class:`~.worker.Worker` consumes, :class:`~.periodic.Scheduler` sends on a
schedule. Each gets the parts it uses (the broker, the backend, the registry,
the publisher), never the Server itself.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import tzinfo
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from .config import Config
from .context import TaskContext
from .drivers import create_backend, create_broker, create_lock
from .drivers.backend import ResultBackend
from .drivers.broker import Broker
from .drivers.lock import Lock
from .errors import TaskNotRegisteredError
from .inline import InlineRunner
from .middleware import Middleware, Middlewares, PrePublishHandler, SignatureHandler
from .periodic import MissedPolicy, PeriodicEntry, Scheduler
from .publisher import Publisher
from .result import AsyncResult, ChainAsyncResult, ChordAsyncResult
from .revoke import revoke
from .signature import Signature
from .tasks import Task, TaskFunction
from .worker import BackgroundService, Worker
from .workflow import Chain, Chord, Group

__all__ = ["Server"]

P = ParamSpec("P")
R = TypeVar("R")


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


class _ConfigReloads:
    """Re-reads a YAML config every 10 s while a worker runs (Go's ``keepReloading``)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def run(self) -> None:
        await self.config.keep_reloading()


class Server:
    """Holds the configuration, broker, backend and registered tasks; sends work.

    ``Server(Config())`` uses the embedded ``memory://`` broker and backend.
    Broker, backend and lock objects can also be passed in directly, and
    middlewares given here run around every publish and every task.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        broker: Broker | None = None,
        backend: ResultBackend | None = None,
        lock: Lock | None = None,
        middlewares: Iterable[Middleware] = (),
    ) -> None:
        self.config = config if config is not None else Config()
        self.broker = broker if broker is not None else create_broker(self.config)
        self.backend = backend if backend is not None else create_backend(self.config)
        self.middlewares = Middlewares(middlewares)
        self.publisher = Publisher(self.broker, self.backend, self.middlewares)
        self.registry: dict[str, TaskFunction] = {}
        self._lock = lock
        self._scheduler: Scheduler | None = None
        self.broker.attach(InlineRunner(self.config, self.registry, self.backend, self.middlewares))

    # -- connections -------------------------------------------------------------

    @property
    def lock(self) -> Lock:
        """The lock for periodic tasks (created from the config on first use)."""
        if self._lock is None:
            self._lock = create_lock(self.config)
        return self._lock

    def swap_drivers(
        self, config: Config, broker: Broker, backend: ResultBackend, lock: Lock | None = None
    ) -> tuple[Config, Broker, ResultBackend, Lock | None]:
        """Send and work through these from now on; returns the ones replaced, to swap back.

        The pytest plugin points a user's server at ``memory://`` this way. Nothing is
        connected or closed here.
        """
        replaced = (self.config, self.broker, self.backend, self._lock)
        self.config, self.broker, self.backend, self._lock = config, broker, backend, lock
        self.publisher.broker, self.publisher.backend = broker, backend
        self.publisher.disconnected()
        broker.attach(InlineRunner(config, self.registry, backend, self.middlewares))
        if self._scheduler is not None:
            self._scheduler.lock = self.lock
        return replaced

    async def connect(self) -> None:
        """Connect the broker and backend; sending connects on demand too."""
        await self.publisher.connect()

    async def close(self) -> None:
        """Close the broker, backend and lock connections."""
        self.publisher.disconnected()
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
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        time_limit: float | None = None,
        rate_limit: str | None = None,
    ) -> TaskFunction:
        """Register ``fn`` under ``name``; a later registration of the same name replaces it.

        ``rate_limit`` (``"10/s"``, ``"100/m"``, ``"1000/h"``) spaces its runs evenly, across
        every worker on a Redis broker, per worker elsewhere (docs/control.md)."""
        function = TaskFunction(name, fn, time_limit=time_limit, rate_limit=rate_limit)
        self.registry[name] = function
        return function

    def register_tasks(self, tasks: Mapping[str, Callable[..., Any]]) -> None:
        """Register several tasks: ``{"add": add, "multiply": multiply}``."""
        for name, fn in tasks.items():
            self.register_task(name, fn)

    def task(
        self,
        name: str | None = None,
        *,
        time_limit: float | None = None,
        rate_limit: str | None = None,
        **options: Any,
    ) -> TaskDecorator:
        """Decorator: register the function and return a typed :class:`Task` handle.

        ``name`` defaults to the function's name; ``options`` are defaults for
        every call (as :meth:`Task.with_options`).
        """

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or str(getattr(fn, "__name__", ""))
            function = self.register_task(task_name, fn, time_limit=time_limit, rate_limit=rate_limit)
            handle: Task[Any, Any] = Task(self.publisher, function)
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

    # -- middlewares ---------------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware`` around every publish and every task of this server's workers."""
        self.middlewares.add(middleware)

    def set_pre_publish_handler(self, handler: SignatureHandler) -> None:
        """Run ``handler(signature)`` (sync or async) right before every publish.

        Go's ``Server.SetPreTaskHandler``; here it runs for group members, callbacks
        and retries too, not only for ``send_task``.
        """
        self.add_middleware(PrePublishHandler(handler))

    # -- sending -----------------------------------------------------------------

    async def send_task(self, signature: Signature) -> AsyncResult[Any]:
        """Record PENDING and publish; returns the AsyncResult (``signature.uuid`` is set)."""
        return await self.publisher.send_task(signature)

    async def send_tasks(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many tasks with batched state writes and publishes."""
        return await self.publisher.send_tasks(signatures)

    async def send_group(self, group: Group, send_concurrency: int = 0) -> list[AsyncResult[Any]]:
        """Write the GroupMeta and PENDING states, then publish every member.

        ``send_concurrency`` caps publishes in flight (0: all at once, batched).
        """
        return await self.publisher.send_group(group, send_concurrency)

    async def send_chord(self, chord: Chord, send_concurrency: int = 0) -> ChordAsyncResult:
        """Send the chord's group; the last member to finish sends the callback."""
        return await self.publisher.send_chord(chord, send_concurrency)

    async def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send the chain's first link; each link sends the next when it succeeds."""
        return await self.publisher.send_chain(chain)

    def get_async_result(self, task_uuid: str, name: str = "") -> AsyncResult[Any]:
        """An AsyncResult for a task sent elsewhere, by UUID."""
        return AsyncResult(Signature(uuid=task_uuid, name=name), self.backend)

    async def revoke(self, task_uuid: str, terminate: bool = False) -> bool:
        """Revoke a task by UUID: if it has not started it never runs; with ``terminate`` a
        running coroutine is cancelled on the worker running it (docs/control.md).
        Returns False (changing nothing) if the task had already finished."""
        await self.publisher.connect()
        return await revoke(self.backend, task_uuid, terminate=terminate)

    # -- workers -----------------------------------------------------------------

    def new_worker(
        self,
        tag: str = "",
        concurrency: int = 10,
        queue: str | None = None,
        *,
        run_scheduler: bool = True,
        **options: Any,
    ) -> Worker:
        """A worker for ``queue`` (the default queue if None); options as :class:`Worker`.

        With ``run_scheduler`` (the default) it also sends this server's periodic tasks.
        """
        services: list[BackgroundService] = []
        if self.config.reloads:
            services.append(_ConfigReloads(self.config))
        if run_scheduler:
            services.append(self.scheduler)
        return Worker(
            self.broker,
            self.backend,
            self.publisher,
            self.registry,
            tag,
            concurrency,
            queue or self.config.default_queue,
            middlewares=self.middlewares,
            services=services,
            handle_signals=not self.config.no_unix_signals,
            error_types=not self.config.go_compatible,
            **options,
        )

    def new_custom_queue_worker(self, tag: str, concurrency: int, queue: str, **options: Any) -> Worker:
        """Go's ``NewCustomQueueWorker``."""
        return self.new_worker(tag, concurrency, queue, **options)

    # -- periodic tasks (Go's RegisterPeriodic*) -------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        """The periodic-task scheduler (created on first use; every worker runs it)."""
        if self._scheduler is None:
            self._scheduler = Scheduler(
                self.publisher,
                self.lock,
                app_name=self.config.app_name,
                go_compatible=self.config.go_compatible,
            )
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
        if self._scheduler is None:
            return []
        return self._scheduler.describe()

    def __repr__(self) -> str:
        return f"<Server broker={self.broker.describe()} backend={self.backend.describe()}>"
