"""A worker app for the observability subprocess tests, configured from Go's environment
variables (BROKER, RESULT_BACKEND, DEFAULT_QUEUE).

With ``OTEL_SPANS_FILE`` set it configures the OpenTelemetry SDK as an application would
(a global tracer provider) and appends each finished span to that file as one JSON line;
the middleware itself is ``OpenTelemetryMiddleware()`` with no arguments.
"""

from __future__ import annotations

import asyncio
import os

from machinery_aio import Config, Server

config = Config.from_env()
server = Server(config)

if os.environ.get("OTEL_SPANS_FILE"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from machinery_aio.middlewares.opentelemetry import OpenTelemetryMiddleware

    def _line(span: ReadableSpan) -> str:
        return span.to_json(indent=None) + "\n"

    _spans = open(os.environ["OTEL_SPANS_FILE"], "a")  # noqa: SIM115 - open for the process's life
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=_line)))
    trace.set_tracer_provider(_provider)
    server.add_middleware(OpenTelemetryMiddleware())


@server.task("add")
async def add(*values: int) -> int:
    return sum(values)


@server.task("nap")
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@server.task("fail")
async def fail(message: str) -> None:
    raise RuntimeError(message)


def without_heartbeats() -> Server:
    """A server whose broker (memory://) and backend (null://) keep no worker registry."""
    return Server(Config(broker="memory://", result_backend="null://"))
