"""The ``machinery-aio`` command: worker, send, inspect, purge, dashboard.

Built on the standard library's argparse, so the command works with the core
install (pydantic and croniter only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, ConfigError
from .drivers import MissingExtraError
from .errors import ConnectionFailedError, TaskFailedError
from .heartbeat import HEARTBEAT_INTERVAL, live_workers, registry_of
from .log import setup_logging
from .runner import error_text
from .server import Server
from .signature import Arg, Signature
from .state import State
from .summary import Progress, TerminalSummary
from .tasks import Task
from .urls import mask_secrets, mask_url

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["load_app", "main"]

EXAMPLES = """\
examples:
  machinery-aio worker -A myapp.tasks:server --concurrency 50
  machinery-aio send -A myapp.tasks:server add 1 2
  machinery-aio send add int64:1 int64:2 --no-wait       (server from environment variables)
  machinery-aio beat -A myapp.tasks:server             (periodic tasks only, no worker)
  machinery-aio inspect periodic -A myapp.tasks:server
  machinery-aio inspect state task_0d3c...
  machinery-aio inspect pending --queue machinery_tasks
  machinery-aio inspect workers
  machinery-aio worker -A myapp.tasks:server --metrics-port 9197   (Prometheus /metrics)
  machinery-aio purge --queue machinery_tasks --yes
  machinery-aio revoke task_0d3c... --terminate
  machinery-aio worker -A myapp.tasks:server --processes auto
  machinery-aio dashboard -A myapp.tasks:server --port 8000 --auth admin:secret

Without -A, the server is built from Go Machinery's environment variables
(BROKER, RESULT_BACKEND, DEFAULT_QUEUE ...) or from --config FILE.yml.
"""


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def load_app(spec: str) -> Server:
    """Import ``module:attribute`` (or ``module``, meaning ``module:server``) as a Server.

    The attribute is a Server, or a factory: a function that takes no arguments and
    returns one (unannotated, or annotated to return a Server). Nothing else is called.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "server"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"cannot import {module_name!r} (from --app {spec!r}): {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise CLIError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, Server):
        return obj
    what = "a task" if isinstance(obj, Task) else f"a {type(obj).__name__}"
    if not _is_factory(obj):
        raise CLIError(
            f"--app {spec}: a machinery_aio.Server was expected (or a function with no arguments "
            f"returning one), but {attr!r} is {what}"
        )
    made = obj()
    if not isinstance(made, Server):
        raise CLIError(f"--app {spec}: {attr}() returned a {type(made).__name__}, not a machinery_aio.Server")
    return made


def _is_factory(obj: Any) -> bool:
    """A plain function with no required parameters whose return annotation, if any, is a Server."""
    if not inspect.isfunction(obj) or inspect.iscoroutinefunction(obj):
        return False
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    for param in signature.parameters.values():
        required = param.default is param.empty
        if required and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            return False
    hint = signature.return_annotation
    if hint is signature.empty:
        return True
    if isinstance(hint, str):
        return hint.rsplit(".", 1)[-1].strip("'\"") in ("Server", "Server | None")
    return isinstance(hint, type) and issubclass(hint, Server)


def _server(args: argparse.Namespace) -> Server:
    if args.app:
        server = load_app(args.app)
        if server.broker.capabilities.in_process and args.command in ("worker", "beat", "dashboard"):
            logging.getLogger("machinery_aio.cli").warning(
                "the broker is %s: it lives in this process, so this %s only sees what "
                "the process itself sends",
                server.broker.describe(),
                args.command,
            )
        return server
    config = Config.from_yaml(args.config) if args.config else Config.from_env(args.env_prefix)
    server = Server(config)
    if server.broker.capabilities.in_process:
        source = f"--config {args.config}" if args.config else f"the environment ({args.env_prefix}BROKER)"
        raise CLIError(
            f"no broker is configured in {source}, and the default memory:// broker lives in one "
            f"process, so {args.command} would see nothing: set {args.env_prefix}BROKER, use --config "
            f"FILE.yml, or -A module:server"
        )
    return server


def parse_cli_arg(text: str) -> Arg:
    """``int64:5``, ``[]string:["a"]``, ``json:{"a":1}``; bare JSON or a plain string otherwise."""
    head, sep, rest = text.partition(":")
    if sep and (head in _GO_NAMES or head == "json"):
        try:
            value: Any = rest if head == "string" else json.loads(rest)
        except ValueError:
            raise CLIError(f"argument {text!r}: {rest!r} is not JSON for {head}") from None
        arg = Arg(type=head, value=value)
        try:
            arg.python_value()
        except ValueError as exc:
            raise CLIError(f"argument {text!r}: {exc}") from None
        return arg
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return Arg.of(value)


def _go_names() -> frozenset[str]:
    from .gotypes import GO_TYPES

    return GO_TYPES


_GO_NAMES = _go_names()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# -- commands ----------------------------------------------------------------------


def banner(server: Server, worker_tag: str, queue: str, concurrency: int) -> str:
    cfg = server.config
    tasks = ", ".join(server.get_registered_task_names()) or "(none)"
    lines = [
        f"machinery-aio {__version__}",
        f"  worker:      {worker_tag}",
        f"  broker:      {mask_url(cfg.broker)}",
        f"  backend:     {mask_url(cfg.result_backend)}",
        f"  queue:       {queue}",
        f"  concurrency: {concurrency or 'unlimited'}",
        f"  results:     expire in {cfg.results_expire_in or 3600} s",
        f"  tasks:       {tasks}",
    ]
    return "\n".join(lines)


async def _worker(args: argparse.Namespace) -> int:
    from .supervisor import CHILD_INDEX, Supervisor

    server = _server(args)
    child = os.environ.get(CHILD_INDEX)
    if ((args.processes or 1) > 1 or args.reload) and child is None:
        await server.close()  # the app loads (errors show here); the children connect
        reload = [os.getcwd()] if args.reload else []
        if args.reload:
            try:
                import watchfiles  # noqa: F401
            except ImportError:
                raise CLIError("--reload needs watchfiles: pip install 'machinery-aio[reload]'") from None
        return await _supervise(args, Supervisor(args.argv, args.processes or 1, reload=reload))
    tag = args.tag
    if tag and child is not None:
        tag = f"{tag}-{child}"
    worker = server.new_worker(
        tag or f"{os.uname().nodename}-{os.getpid()}",
        args.concurrency,
        args.queue,
        grace_period=args.grace_period,
        task_time_limit=args.time_limit,
        run_scheduler=not args.no_scheduler,
        heartbeat_interval=args.heartbeat_interval or None,
    )
    print(banner(server, worker.tag, worker.queue, worker.concurrency), file=sys.stderr)
    with _observed(args, server, worker):
        async with _closing(server):
            await worker.launch()
    return 0


async def _supervise(args: argparse.Namespace, supervisor: Supervisor) -> int:
    """Run the supervisor; with --metrics-port it serves its children's metrics, summed."""
    if args.metrics_port is None:
        return await supervisor.run()
    from .middlewares.prometheus_multiprocess import MultiProcessMetrics

    metrics = MultiProcessMetrics(args.metrics_port)
    try:
        metrics.open()
    except OSError as exc:
        raise CLIError(f"cannot serve metrics on port {args.metrics_port}: {exc.strerror or exc}") from None
    print(f"  metrics:     http://0.0.0.0:{args.metrics_port}/metrics (all processes)", file=sys.stderr)
    supervisor.child_env.update(metrics.environ)
    supervisor.on_exit = metrics.process_dead
    try:
        return await supervisor.run()
    finally:
        metrics.close()


@contextlib.contextmanager
def _observed(args: argparse.Namespace, server: Server, worker: Any) -> Iterator[None]:
    """The worker's summary line (at a terminal, or with --summary) and --metrics-port."""
    if args.summary or (args.summary is None and sys.stderr.isatty()):
        worker.services.append(TerminalSummary(worker, sys.stderr))
    if args.metrics_port is None:
        yield
        return
    from .middlewares.prometheus import count_worker_metrics, serve_worker_metrics
    from .supervisor import CHILD_INDEX

    if os.environ.get(CHILD_INDEX) is not None:  # the supervisor serves the sum (_supervise)
        added = count_worker_metrics(list(server.middlewares), worker)
        if added is not None:
            server.add_middleware(added)
        yield
        return

    try:
        added, stop = serve_worker_metrics(list(server.middlewares), worker, args.metrics_port)
    except OSError as exc:
        raise CLIError(f"cannot serve metrics on port {args.metrics_port}: {exc.strerror or exc}") from None
    if added is not None:
        server.add_middleware(added)
    print(f"  metrics:     http://0.0.0.0:{args.metrics_port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        stop()


async def _beat(args: argparse.Namespace) -> int:
    from .periodic import run_beat

    server = _server(args)
    async with _closing(server):
        scheduler = server.scheduler
        if not scheduler.entries:
            raise CLIError(
                "no periodic tasks are registered on this server "
                "(server.register_periodic_task(...) in the --app module)"
            )
        names = ", ".join(sorted(scheduler.entries))
        print(
            f"machinery-aio {__version__} beat\n  locks:    {server.lock.describe()}\n"
            f"  broker:   {server.broker.describe()}\n  periodic: {names}",
            file=sys.stderr,
        )
        await run_beat(scheduler, handle_signals=not server.config.no_unix_signals)
        return 0


async def _send(args: argparse.Namespace) -> int:
    server = _server(args)
    # memory:// lives in this process: nobody else can run the task, so run it here.
    local = server.broker.capabilities.in_process
    if local and args.no_wait:
        raise CLIError(
            "--no-wait with the in-process memory:// broker would lose the task; "
            "configure a broker that other processes share"
        )
    if not args.no_wait and not server.backend.capabilities.stores_results:
        raise CLIError(f"the result backend {server.backend.describe()} stores no results: use --no-wait")
    if not args.no_wait and not local and server.backend.capabilities.in_process:
        raise CLIError(
            f"the result backend is {server.backend.describe()}, which no worker process can write "
            "to: set RESULT_BACKEND to a shared backend, or use --no-wait"
        )
    async with _closing(server):
        task_args = _send_args(server, args)
        if args.app and not server.is_task_registered(args.name):
            known = ", ".join(server.get_registered_task_names()) or "none"
            print(
                f"machinery-aio: warning: no task {args.name!r} is registered in {args.app} "
                f"(registered: {known}); only a worker that knows it can run it",
                file=sys.stderr,
            )
        sig = Signature(name=args.name, args=task_args, routing_key=args.queue or "")
        if args.countdown:
            from datetime import UTC, datetime, timedelta

            sig.eta = datetime.now(UTC) + timedelta(seconds=args.countdown)
        result = await server.send_task(sig)
        print(f"sent {sig.name} {sig.uuid}", file=sys.stderr)
        if args.no_wait:
            print(sig.uuid)
            return 0
        worker: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if local:
            worker = server.new_worker("machinery-aio-send", 1, args.queue, run_scheduler=False)
        try:
            async with worker:
                value = await _wait(result, args.timeout)
        except TaskFailedError as exc:
            print(f"FAILURE: {exc.error}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"no result within {args.timeout} s (task {sig.uuid})", file=sys.stderr)
            return 3
        _print_json(value)
        return 0


async def _wait(result: Any, timeout: float) -> Any:
    """The task's value, with its states shown on stderr while waiting."""
    progress = Progress(sys.stderr)
    watching = asyncio.create_task(progress.watch(result))
    try:
        value = await result.get(timeout=timeout)
    except TaskFailedError:
        progress.show(State.FAILURE)
        raise
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    progress.show(State.SUCCESS)
    return value


def _send_args(server: Server, args: argparse.Namespace) -> list[Arg]:
    """The command line's args, checked against the task's parameters when it is known."""
    try:
        if server.is_task_registered(args.name) and not any(":" in a for a in args.args):
            values = [json.loads(a) if _is_json(a) else a for a in args.args]
            function = server.get_registered_task(args.name)
            task_args = function.build_args(values, {})
            function.convert_args([a.python_value() for a in task_args])  # as the worker will
            return task_args
        return [parse_cli_arg(a) for a in args.args]
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def _inspect(args: argparse.Namespace) -> int:
    server = _server(args)
    what = args.what
    if args.limit < 1:
        raise CLIError("--limit must be 1 or more")
    caps = server.broker.capabilities
    if what == "delayed" and not caps.list_delayed:
        raise CLIError(f"{server.broker.describe()} cannot list delayed tasks (docs/cli.md says why)")
    if what == "dead" and not caps.dead_letters:
        raise CLIError(f"{server.broker.describe()} keeps no dead letters")
    if what == "state" and not args.uuid:
        raise CLIError("inspect state needs a task UUID")
    if what == "registered":
        _print_json(server.get_registered_task_names())
        return 0
    if what == "periodic":
        _print_json(await server.describe_periodic())
        return 0
    if what == "workers":
        return await _inspect_workers(server)
    async with _closing(server):
        await server.connect()
        broker = server.broker
        queue = args.queue or server.config.default_queue
        if what == "state":
            state = await server.backend.get_state(args.uuid)
            if state is None:
                print(f"no state stored for {args.uuid}", file=sys.stderr)
                return 1
            _print_json(json.loads(state.to_json()))  # Go's record; "Progress" only when there is some
        elif what == "pending":
            count = await broker.count_pending(queue)
            if not caps.list_pending:  # SQS: counts only
                _print_json([])
                print(
                    f"about {count} pending in {queue!r} ({broker.describe()} can count but not list them)",
                    file=sys.stderr,
                )
                return 0
            tasks = [_summary(t) for t in await broker.get_pending_tasks(queue, args.limit)]
            held = await broker.get_held_tasks(queue, args.limit)
            tasks += [{**_summary(t), "held": True} for t in held]
            _print_json(tasks)
            shown = f" (first {args.limit} shown)" if count > args.limit else ""
            print(f"{count} pending in {queue!r}{shown}", file=sys.stderr)
            if held:
                print(
                    f"{len(held)} taken by workers and not finished (running, or handed back for "
                    f'later because no worker knows the task\'s name); listed with "held": true',
                    file=sys.stderr,
                )
        elif what == "delayed":
            delayed = await broker.get_delayed_tasks(args.limit)
            _print_json([_summary(t) for t in delayed])
            more = " (the limit)" if len(delayed) == args.limit else ""
            print(f"{len(delayed)} delayed{more}", file=sys.stderr)
        elif what == "dead":
            letters = await broker.get_dead_letters(queue, args.limit)
            _print_json([letter.model_dump() for letter in letters])
            more = " (the limit)" if len(letters) == args.limit else ""
            print(f"{len(letters)} dead letters{more}", file=sys.stderr)
        return 0


async def _inspect_workers(server: Server) -> int:
    registry = registry_of(server.backend, server.broker)
    if registry is None:
        raise CLIError(
            f"neither the result backend {server.backend.describe()} nor the broker "
            f"{server.broker.describe()} keeps worker heartbeats"
        )
    async with _closing(server):
        await server.connect()
        workers = await live_workers(registry)
        _print_json([w.model_dump(mode="json") for w in workers])
        print(f"{len(workers)} live workers", file=sys.stderr)
        return 0


def _summary(sig: Signature) -> dict[str, Any]:
    return {
        "uuid": sig.uuid,
        "name": sig.name,
        "queue": sig.routing_key,
        "eta": sig.eta.isoformat() if sig.eta else None,
        "args": [a.value for a in sig.args or ()],
        "retry_count": sig.retry_count,
    }


async def _purge(args: argparse.Namespace) -> int:
    server = _server(args)
    queue = args.queue or server.config.default_queue
    if not args.yes:
        raise CLIError(f"purge deletes every pending task in {queue!r}; add --yes to confirm")
    async with _closing(server):
        await server.connect()
        count = await server.broker.purge(queue)
        print(f"purged {count} tasks from {queue}")
        return 0


async def _revoke(args: argparse.Namespace) -> int:
    server = _server(args)
    if not args.uuid.strip():
        raise CLIError("revoke needs a task UUID")
    if server.backend.capabilities.in_process:
        raise CLIError(
            f"the result backend is {server.backend.describe()}, which no worker process reads: "
            "set RESULT_BACKEND to a shared backend"
        )
    async with _closing(server):
        revoked = await server.revoke(args.uuid.strip(), terminate=args.terminate)
    if not revoked:
        print(f"{args.uuid} has already finished; nothing revoked", file=sys.stderr)
        return 1
    how = " (running copies are cancelled)" if args.terminate else ""
    print(f"revoked {args.uuid}{how}", file=sys.stderr)
    return 0


async def _dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .dashboard import dashboard_app
        from .dashboard.security import AUTH_ENV
    except ImportError as exc:
        raise CLIError(
            f"the dashboard needs the dashboard extra: pip install 'machinery-aio[dashboard]' ({exc})"
        ) from None
    server = _server(args)
    try:
        app = dashboard_app(server, auth=args.auth)  # None: the environment variable, if set
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    guarded = bool(args.auth or os.environ.get(AUTH_ENV))
    guard = "basic auth on" if guarded else f"no auth: --auth USER:PASSWORD or {AUTH_ENV} turns it on"
    print(
        f"machinery-aio {__version__} dashboard on http://{args.host}:{args.port}/ ({guard})", file=sys.stderr
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    async with _closing(server):
        await uvicorn.Server(config).serve()
    return 0


@contextlib.asynccontextmanager
async def _closing(server: Server) -> AsyncIterator[Server]:
    """Close the server's connections afterwards; a failure to close is only logged."""
    try:
        yield server
    finally:
        try:
            await server.close()
        except Exception as exc:
            logging.getLogger("machinery_aio.cli").debug("closing the connections failed: %s", exc)


# -- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="machinery-aio",
        description="An asyncio task queue that speaks Go Machinery's wire format.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"machinery-aio {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-A", "--app", help="module:attribute of your Server (e.g. myapp.tasks:server)")
    common.add_argument("--config", help="a Go Machinery config.yml (used when --app is not given)")
    common.add_argument(
        "--env-prefix", default="", help="prefix of the environment variables when --app is not given"
    )
    common.add_argument(
        "--loglevel",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG, INFO (the default: one line per task received, succeeded, retried or failed), "
        "WARNING, ERROR",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        parents=[common],
        help="run a worker",
        description="Consume a queue and run tasks until SIGTERM/SIGINT.",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=10,
        help="tasks running at once (0: unlimited; 1: one by one). Default 10",
    )
    worker.add_argument("-Q", "--queue", help="queue to consume (default: the config's default_queue)")
    worker.add_argument("-t", "--tag", help="consumer tag / worker name (default: host-pid)")
    worker.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds to let running tasks finish on SIGTERM. Default 30",
    )
    worker.add_argument(
        "--time-limit", type=float, default=None, help="default per-task time limit in seconds"
    )
    worker.add_argument(
        "--no-scheduler", action="store_true", help="do not run periodic tasks in this worker"
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics (needs the prometheus extra; "
        "under --processes the supervisor serves every child's, summed)",
    )
    worker.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=HEARTBEAT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between heartbeats for `inspect workers` (0: none). Default {HEARTBEAT_INTERVAL:g}",
    )
    worker.add_argument(
        "--summary",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print processed/failed/rate/running every few seconds (default: on a terminal)",
    )
    worker.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use uvloop (default: if installed)",
    )
    worker.add_argument(
        "--processes",
        type=_processes,
        default=None,
        metavar="N",
        help="run N worker processes under a supervisor that restarts any that dies "
        "('auto': one per core; --concurrency is per process). Default 1",
    )
    worker.add_argument(
        "--reload",
        action="store_true",
        help="restart the worker when a Python file under the current directory changes "
        "(development; needs the reload extra)",
    )
    worker.set_defaults(func=_worker)

    beat = sub.add_parser(
        "beat",
        parents=[common],
        help="run only the periodic-task scheduler",
        description="Send periodic tasks on schedule until SIGTERM/SIGINT. Workers "
        "run the scheduler too (unless --no-scheduler); each tick is sent once "
        "however many run.",
    )
    beat.set_defaults(func=_beat)

    send = sub.add_parser(
        "send",
        parents=[common],
        help="send a task and print its result",
        description='Send a task. ARGs are JSON (1, 2.5, "x", [1,2]) or '
        'TYPE:VALUE with a Go type name (int64:1, []string:["a"], json:{...}).',
    )
    send.add_argument("name", help="task name")
    send.add_argument("args", nargs="*", metavar="ARG", help="task arguments")
    send.add_argument("-Q", "--queue", help="routing key / queue")
    send.add_argument("--countdown", type=float, default=0, help="delay in seconds")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result")
    send.add_argument("--no-wait", action="store_true", help="print the task UUID and exit")
    send.set_defaults(func=_send)

    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="show states, queues, dead letters",
        description="Inspect a task state or the broker.",
    )
    inspect.add_argument(
        "what", choices=["state", "pending", "delayed", "dead", "registered", "periodic", "workers"]
    )
    inspect.add_argument("uuid", nargs="?", help="task UUID (for state)")
    inspect.add_argument("-Q", "--queue", help="queue (default: the config's default_queue)")
    inspect.add_argument(
        "--limit", type=int, default=100, help="list at most this many tasks or dead letters. Default 100"
    )
    inspect.set_defaults(func=_inspect)

    purge = sub.add_parser("purge", parents=[common], help="delete every pending task in a queue")
    purge.add_argument("-Q", "--queue", help="queue (default: the config's default_queue)")
    purge.add_argument("--yes", action="store_true", help="confirm")
    purge.set_defaults(func=_purge)

    revoke = sub.add_parser(
        "revoke",
        parents=[common],
        help="revoke a task: it never runs (--terminate: cancel it where it runs)",
        description="Revoke a task by UUID: a pending or delayed task never runs; with "
        "--terminate a running coroutine is cancelled on its worker. Its state becomes "
        "FAILURE 'revoked'. Exits 1 if the task had already finished.",
    )
    revoke.add_argument("uuid", help="the task's UUID")
    revoke.add_argument("--terminate", action="store_true", help="also cancel it if it is running")
    revoke.set_defaults(func=_revoke)

    dashboard = sub.add_parser(
        "dashboard",
        parents=[common],
        help="serve the web dashboard",
        description="Serve the web dashboard (needs the dashboard extra).",
    )
    dashboard.add_argument("--port", type=_port, default=8000, help="port to listen on. Default 8000")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to listen on. Default 127.0.0.1 (this machine only)"
    )
    dashboard.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="require HTTP basic auth (default: the MACHINERY_DASHBOARD_AUTH environment variable)",
    )
    dashboard.set_defaults(func=_dashboard)
    return parser


def _processes(text: str) -> int:
    from .supervisor import parse_processes

    try:
        return parse_processes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, not {text}")
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {port}")
    return port


def _run(coro: Awaitable[int], use_uvloop: bool | None) -> int:
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise CLIError("--uvloop needs uvloop: pip install 'machinery-aio[uvloop]'") from None
        else:
            return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(args.loglevel)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    try:
        return _run(args.func(args), getattr(args, "uvloop", False))
    except (CLIError, ConfigError, MissingExtraError) as exc:
        print(f"machinery-aio: error: {exc}", file=sys.stderr)
        return 2
    except ConnectionFailedError as exc:
        print(f"machinery-aio: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # One line, passwords masked; the traceback only when asked for.
        print(f"machinery-aio: error: {mask_secrets(error_text(exc, with_type=True))}", file=sys.stderr)
        if args.loglevel == "DEBUG":
            print(mask_secrets(traceback.format_exc()), file=sys.stderr)
        else:
            print("(--loglevel DEBUG shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
