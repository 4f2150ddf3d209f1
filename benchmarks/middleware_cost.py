"""What the middleware seam costs per task, measured inside one worker's runner.

    python -m benchmarks.middleware_cost [--tasks 20000] [--rounds 5] [--variant none|empty|noop]

Runs the same no-op task through ``TaskRunner.process`` (decode, states to ``null://``, the
call, SUCCESS) with no middleware, with one middleware that overrides no hook, and with one
no-op middleware that overrides all four, interleaved over several rounds; prints the median
CPU microseconds per task of each and the difference to the first. No broker round trip is
involved, so the differences are the seam's own cost. With the ``otel`` and ``prometheus``
extras installed it measures the observability middlewares too, and then each middleware's
four hooks called directly, which is steadier than the differences on a busy machine.

``--variant`` runs one variant once, for counting instructions on a noisy machine::

    valgrind --tool=callgrind python -m benchmarks.middleware_cost --variant noop --tasks 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from machinery_aio import Arg, Config, Middleware, Server, Signature, State, TaskContext, TaskOutcome
from machinery_aio.middleware import Middlewares
from machinery_aio.runner import TaskRunner


class Empty(Middleware):
    """Overrides nothing: the chain skips it."""


class NoOp(Middleware):
    async def before_publish(self, signature: Signature) -> None:
        return None

    async def after_publish(self, signature: Signature) -> None:
        return None

    async def before_task(self, ctx: TaskContext) -> None:
        return None

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        return None


SHORT = {
    "none": "no middleware",
    "empty": "a middleware without hooks",
    "noop": "a no-op middleware, 4 hooks",
}

VARIANTS: dict[str, list[Middleware]] = {
    "no middleware": [],
    "a middleware without hooks": [Empty()],
    "a no-op middleware, 4 hooks": [NoOp()],
}


def _observability() -> None:
    """The observability middlewares, when their extras are installed: OpenTelemetry with no
    SDK configured (the global provider is the API's stand-in) and with an SDK provider that
    samples every span and exports nowhere, and Prometheus counting into its own registry."""
    try:
        from opentelemetry.sdk.trace import TracerProvider

        from machinery_aio.middlewares.opentelemetry import OpenTelemetryMiddleware
    except ImportError:
        pass
    else:
        VARIANTS["OpenTelemetry, not configured"] = [OpenTelemetryMiddleware()]
        VARIANTS["OpenTelemetry, SDK, no exporter"] = [OpenTelemetryMiddleware(TracerProvider())]
    try:
        from prometheus_client import CollectorRegistry

        from machinery_aio.middlewares.prometheus import PrometheusMiddleware
    except ImportError:
        pass
    else:
        VARIANTS["Prometheus"] = [PrometheusMiddleware(registry=CollectorRegistry())]


_observability()


async def measure(middlewares: list[Middleware], tasks: int) -> float:
    """CPU microseconds per task through the runner with ``middlewares``."""
    server = Server(Config(broker="memory://mw-cost", result_backend="null://"))

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    runner = TaskRunner(
        server.registry, server.backend, server.publisher, Middlewares(middlewares), tag="bench"
    )
    bodies = [add.signature(i, 1) for i in range(tasks)]
    for sig in bodies:
        sig.uuid = f"task_{id(sig)}"
    raw = [sig.to_json() for sig in bodies]
    started = time.process_time()
    for body in raw:
        await runner.process(body)
    return (time.process_time() - started) / tasks * 1e6


async def run(tasks: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):  # interleaved, so a noisy spell hits every variant alike
        for name, middlewares in VARIANTS.items():
            samples[name].append(await measure(middlewares, tasks))
    return {name: statistics.median(values) for name, values in samples.items()}


async def hooks_only(middlewares: list[Middleware], tasks: int) -> float:
    """CPU microseconds per task of one middleware's four hooks called directly (a publish and
    a run), without the runner around them: its own cost, away from the runner's noise."""
    [middleware] = middlewares
    sigs = [Signature(uuid=f"task_{i}", name="add", args=[Arg.of(i)], headers={}) for i in range(tasks)]
    outcome = TaskOutcome(State.SUCCESS, [1], None, None, 0.001)
    started = time.process_time()
    for sig in sigs:
        await middleware.before_publish(sig)
        await middleware.after_publish(sig)
        ctx = TaskContext(sig, "bench")
        await middleware.before_task(ctx)
        await middleware.after_task(ctx, outcome)
    return (time.process_time() - started) / tasks * 1e6


async def run_hooks(tasks: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name, m in VARIANTS.items() if len(m) == 1}
    for _ in range(rounds):
        for name in samples:
            samples[name].append(await hooks_only(VARIANTS[name], tasks))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variant", choices=sorted(SHORT), help="run only this variant, once")
    args = parser.parse_args()
    if args.variant:
        name = SHORT[args.variant]
        cpu = asyncio.run(measure(VARIANTS[name], args.tasks))
        print(f"{name}: {cpu:.2f} µs CPU per task ({args.tasks} tasks)")
        return
    medians = asyncio.run(run(args.tasks, args.rounds))
    base = medians["no middleware"]
    print(f"runner CPU per task, median of {args.rounds} rounds of {args.tasks} tasks:")
    for name, value in medians.items():
        print(f"  {name:32} {value:7.2f} µs  ({value - base:+.2f} µs)")
    hooks = asyncio.run(run_hooks(args.tasks, args.rounds))
    print("a middleware's four hooks alone (publish + run), CPU per task:")
    for name, value in hooks.items():
        print(f"  {name:32} {value:7.2f} µs")


if __name__ == "__main__":
    main()
