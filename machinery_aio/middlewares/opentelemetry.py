"""OpenTelemetry tracing for every publish and every run (needs the ``otel`` extra).

A PRODUCER span ``send <task>`` covers each publish and travels with the task in
``Signature.Headers`` as W3C ``traceparent``/``tracestate`` (the global propagator's
fields). The worker starts a CONSUMER span ``run <task>`` whose parent is that
PRODUCER span, and keeps it current while the task runs, so whatever the task sends
(the next link of a chain, a chord's callback, a retry) and whatever it traces itself
joins the same trace. A group's members are published under one ``send group`` span.

Go Machinery traces with opentracing and injects the tracer's text-map carrier into
the same Headers; with Jaeger that is ``uber-trace-id``. It is read as well, so a trace
started in a Go service continues here, and written too with ``jaeger_headers=True``,
so Go workers continue ours.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.jaeger import JaegerPropagator
    from opentelemetry.propagators.textmap import Getter, TextMapPropagator
    from opentelemetry.trace import ProxyTracerProvider, Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    from ..drivers import MissingExtraError

    raise MissingExtraError(
        "OpenTelemetryMiddleware needs OpenTelemetry: pip install 'machinery-aio[otel]'"
    ) from exc

from .. import __version__
from ..context import TaskContext
from ..middleware import Middleware, TaskOutcome
from ..retry import RetryTaskLater
from ..signature import Signature
from ..state import State

__all__ = ["OpenTelemetryMiddleware"]

_SPAN = "opentelemetry.span"
_TOKEN = "opentelemetry.token"
MAX_OPEN = 10_000
"""At most this many publishes awaiting ``after_publish`` are remembered (a publish that
failed never gets one); past that the oldest span is ended."""

LOOKUP_INTERVAL = 1.0
"""Seconds between looks for a global tracer provider while none is set."""

_running: ContextVar[str] = ContextVar("machinery_aio_otel_running", default="")
"""The UUID of the task this asyncio task is running: a publish of that UUID is its retry."""


class _HeadersGetter(Getter[Mapping[str, Any]]):
    """Reads Signature.Headers, skipping values that are not strings (as Go does)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key, value in carrier.items() if isinstance(value, str)]


_GETTER = _HeadersGetter()
_JAEGER = JaegerPropagator()


class OpenTelemetryMiddleware(Middleware):
    """Traces publishes (PRODUCER spans) and runs (CONSUMER spans).

    Args:
        tracer_provider: where spans go; the global provider if None (so a provider set
            later with ``trace.set_tracer_provider`` is used too).
        propagator: writes and reads the context in Headers; the global propagator if
            None (W3C ``traceparent``/``tracestate`` and ``baggage`` by default).
        jaeger_headers: also write Jaeger's ``uber-trace-id``, for Go workers traced by
            Jaeger. It is always read.
        system: the ``messaging.system`` attribute.

    With no SDK configured, the global provider is a no-op and every hook returns at once.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        jaeger_headers: bool = False,
        system: str = "machinery",
    ) -> None:
        self._provider = tracer_provider
        self._tracer = trace.get_tracer("machinery_aio", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self.jaeger_headers = jaeger_headers
        self.system = system
        self._configured = False
        self._look_again = 0.0
        self._sending: dict[int, Span] = {}
        self._groups: dict[str, list[Any]] = {}  # group uuid -> [span, members not yet published]

    def _off(self) -> bool:
        """True while no SDK is configured: the provider is still the API's stand-in.

        A global provider can be set once and never unset, so once one is found this is
        False for good; until then it is looked up at most once a second (the lookup reads
        the environment, which costs more than the rest of a hook)."""
        if self._configured:
            return False
        now = time.monotonic()
        if now < self._look_again:
            return True
        provider = self._provider or trace.get_tracer_provider()
        self._configured = not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))
        self._look_again = now + LOOKUP_INTERVAL
        return not self._configured

    def _textmap(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    # -- publishing ------------------------------------------------------------------

    async def before_publish(self, signature: Signature) -> None:
        if self._off():
            return
        parent = otel_context.get_current()
        if signature.group_uuid and signature.uuid != _running.get():
            parent = self._group_context(signature, parent)
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.id": signature.uuid,
            "machinery.task.name": signature.name,
            "machinery.task.retry_count": signature.retry_count,
        }
        if signature.group_uuid:
            attributes["machinery.group.uuid"] = signature.group_uuid
        if signature.eta is not None:
            attributes["machinery.task.eta"] = signature.eta.isoformat()
        span = self._tracer.start_span(
            f"send {signature.name}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        )
        headers = dict(signature.headers or {})
        carried = trace.set_span_in_context(span, parent)
        self._textmap().inject(headers, context=carried)
        if self.jaeger_headers:
            _JAEGER.inject(headers, context=carried)
        signature.headers = headers
        self._remember(id(signature), span)

    async def after_publish(self, signature: Signature) -> None:
        span = self._sending.pop(id(signature), None)
        if span is None:
            return
        if signature.routing_key:
            span.set_attribute("messaging.destination.name", signature.routing_key)
        span.end()
        if signature.group_uuid:
            self._member_sent(signature.group_uuid)

    def _remember(self, key: int, span: Span) -> None:
        self._sending[key] = span
        if len(self._sending) > MAX_OPEN:
            oldest = next(iter(self._sending))
            self._sending.pop(oldest).end()

    def _group_context(self, signature: Signature, parent: otel_context.Context) -> otel_context.Context:
        """The context of the ``send group`` span around a group's members (started by the
        first member of a group this process publishes)."""
        entry = self._groups.get(signature.group_uuid)
        if entry is None:
            workflow = "chord" if signature.chord_callback is not None else "group"
            span = self._tracer.start_span(
                f"send {workflow}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": self.system,
                    "messaging.operation.type": "send",
                    "machinery.workflow": workflow,
                    "machinery.group.uuid": signature.group_uuid,
                    "machinery.group.task_count": signature.group_task_count,
                },
            )
            entry = self._groups[signature.group_uuid] = [span, max(1, signature.group_task_count)]
            if len(self._groups) > MAX_OPEN:
                self._groups.pop(next(iter(self._groups)))[0].end()
        group_span: Span = entry[0]
        return trace.set_span_in_context(group_span, parent)

    def _member_sent(self, group_uuid: str) -> None:
        entry = self._groups.get(group_uuid)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._groups[group_uuid]
            entry[0].end()

    # -- running ---------------------------------------------------------------------

    async def before_task(self, ctx: TaskContext) -> None:
        if self._off():
            return
        sig = ctx.signature
        parent = self._textmap().extract(sig.headers or {}, context=otel_context.Context(), getter=_GETTER)
        if not trace.get_current_span(parent).get_span_context().is_valid:
            parent = _JAEGER.extract(sig.headers or {}, context=parent, getter=_GETTER)
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "run",
            "messaging.destination.name": sig.routing_key,
            "messaging.message.id": sig.uuid,
            "machinery.task.name": sig.name,
            "machinery.task.retry_count": sig.retry_count,
        }
        if ctx.worker_tag:
            attributes["machinery.worker"] = ctx.worker_tag
        if sig.group_uuid:
            attributes["machinery.group.uuid"] = sig.group_uuid
        if sig.chord_callback is not None:
            attributes["machinery.chord.callback.uuid"] = sig.chord_callback.uuid
            attributes["machinery.chord.callback.name"] = sig.chord_callback.name
        span = self._tracer.start_span(f"run {sig.name}", context=parent, kind=SpanKind.CONSUMER)
        span.set_attributes(attributes)
        ctx.data[_SPAN] = span
        ctx.data[_TOKEN] = (
            otel_context.attach(trace.set_span_in_context(span, parent)),
            _running.set(sig.uuid),
        )

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        span: Span | None = ctx.data.pop(_SPAN, None)
        if span is None:
            return
        span.set_attribute("machinery.task.outcome", outcome.state.value)
        exc = outcome.exception
        if outcome.state is State.RETRY:
            deliberate = isinstance(exc, RetryTaskLater)
            span.add_event(
                "retry",
                {
                    "machinery.task.retry_count": ctx.signature.retry_count,
                    "machinery.task.eta": ctx.signature.eta.isoformat() if ctx.signature.eta else "",
                    "machinery.retry.reason": outcome.error or "",
                },
            )
            if exc is not None and not deliberate:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"retrying: {outcome.error}"))
        elif outcome.state is State.FAILURE:
            if exc is not None:
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, outcome.error or "task failed"))
        span.end()
        tokens = ctx.data.pop(_TOKEN, None)
        if tokens is not None:
            otel_token, running_token = tokens
            _running.reset(running_token)
            otel_context.detach(otel_token)
