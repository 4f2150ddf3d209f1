"""The ``machinery-aio`` command: worker, send, inspect, purge.

Built on the standard library's argparse, so the command works with the core
install (pydantic and croniter only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import __version__
from .config import Config, ConfigError
from .drivers import MissingExtraError
from .errors import TaskFailedError
from .log import setup_logging
from .server import Server
from .signature import Arg, Signature
from .urls import mask_url

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
  machinery-aio purge --queue machinery_tasks --yes

Without -A, the server is built from Go Machinery's environment variables
(BROKER, RESULT_BACKEND, DEFAULT_QUEUE ...) or from --config FILE.yml.
"""


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def load_app(spec: str) -> Server:
    """Import ``module:attribute`` (or ``module``, meaning ``module:server``) as a Server.

    The attribute may be a Server or a function returning one.
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
    if not isinstance(obj, Server) and callable(obj):
        obj = obj()
    if not isinstance(obj, Server):
        raise CLIError(f"{spec} is a {type(obj).__name__}, not a machinery_aio.Server")
    return obj


def _server(args: argparse.Namespace) -> Server:
    if args.app:
        return load_app(args.app)
    config = Config.from_yaml(args.config) if args.config else Config.from_env(args.env_prefix)
    return Server(config)


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
    server = _server(args)
    worker = server.new_worker(
        args.tag or f"{os.uname().nodename}-{os.getpid()}",
        args.concurrency,
        args.queue,
        grace_period=args.grace_period,
        task_time_limit=args.time_limit,
        run_scheduler=not args.no_scheduler,
    )
    print(banner(server, worker.tag, worker.queue, worker.concurrency), file=sys.stderr)
    try:
        await worker.launch()
    finally:
        await server.close()
    return 0


async def _beat(args: argparse.Namespace) -> int:
    from .periodic import Scheduler, run_beat

    server = _server(args)
    try:
        scheduler = server.scheduler_for_worker()
        if not isinstance(scheduler, Scheduler) or not scheduler.entries:
            raise CLIError(
                "no periodic tasks are registered on this server "
                "(server.register_periodic_task(...) in the --app module)"
            )
        names = ", ".join(sorted(scheduler.entries))
        print(
            f"machinery-aio {__version__} beat\n  locks:    {server.lock.describe()}\n"
            f"  broker:   {mask_url(server.config.broker)}\n  periodic: {names}",
            file=sys.stderr,
        )
        await run_beat(scheduler)
        return 0
    finally:
        await server.close()


async def _send(args: argparse.Namespace) -> int:
    server = _server(args)
    # memory:// lives in this process: nobody else can run the task, so run it here.
    local = server.broker.scheme == "memory"
    try:
        if local and args.no_wait:
            raise CLIError(
                "--no-wait with the in-process memory:// broker would lose the task; "
                "configure a broker that other processes share"
            )
        try:
            if server.is_task_registered(args.name) and not any(":" in a for a in args.args):
                values = [json.loads(a) if _is_json(a) else a for a in args.args]
                function = server.get_registered_task(args.name)
                task_args = function.build_args(values, {})
                function.convert_args([a.python_value() for a in task_args])  # as the worker will
            else:
                task_args = [parse_cli_arg(a) for a in args.args]
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
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
                value = await result.get(timeout=args.timeout)
        except TaskFailedError as exc:
            print(f"FAILURE: {exc.error}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"no result within {args.timeout} s (task {sig.uuid})", file=sys.stderr)
            return 3
        _print_json(value)
        return 0
    finally:
        await server.close()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def _inspect(args: argparse.Namespace) -> int:
    server = _server(args)
    try:
        await server.connect()
        what = args.what
        if what == "state":
            if not args.uuid:
                raise CLIError("inspect state needs a task UUID")
            state = await server.backend.get_state(args.uuid)
            if state is None:
                print(f"no state stored for {args.uuid}", file=sys.stderr)
                return 1
            _print_json(state.model_dump(mode="json", by_alias=True))
        elif what == "pending":
            tasks = await server.broker.get_pending_tasks(args.queue)
            _print_json([_summary(t) for t in tasks])
            print(f"{len(tasks)} pending", file=sys.stderr)
        elif what == "delayed":
            tasks = await server.broker.get_delayed_tasks()
            _print_json([_summary(t) for t in tasks])
            print(f"{len(tasks)} delayed", file=sys.stderr)
        elif what == "dead":
            letters = await server.broker.get_dead_letters(args.queue)
            _print_json([letter.model_dump() for letter in letters])
            print(f"{len(letters)} dead letters", file=sys.stderr)
        elif what == "registered":
            _print_json(server.get_registered_task_names())
        elif what == "periodic":
            lister: Callable[[], Awaitable[list[dict[str, Any]]]] | None = getattr(
                server, "describe_periodic", None
            )
            if lister is None:
                raise CLIError("this version has no periodic tasks")
            _print_json(await lister())
        return 0
    except NotImplementedError as exc:
        raise CLIError(str(exc)) from None
    finally:
        await server.close()


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
    try:
        await server.connect()
        count = await server.broker.purge(queue)
        print(f"purged {count} tasks from {queue}")
        return 0
    finally:
        await server.close()


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
    common.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
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
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use uvloop (default: if installed)",
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
    inspect.add_argument("what", choices=["state", "pending", "delayed", "dead", "registered", "periodic"])
    inspect.add_argument("uuid", nargs="?", help="task UUID (for state)")
    inspect.add_argument("-Q", "--queue", help="queue (default: the config's default_queue)")
    inspect.set_defaults(func=_inspect)

    purge = sub.add_parser("purge", parents=[common], help="delete every pending task in a queue")
    purge.add_argument("-Q", "--queue", help="queue (default: the config's default_queue)")
    purge.add_argument("--yes", action="store_true", help="confirm")
    purge.set_defaults(func=_purge)
    return parser


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
    setup_logging(args.loglevel.upper())
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    try:
        return _run(args.func(args), getattr(args, "uvloop", False))
    except (CLIError, ConfigError, MissingExtraError) as exc:
        print(f"machinery-aio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
