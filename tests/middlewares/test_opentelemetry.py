"""OpenTelemetryMiddleware in one process (memory://): spans, parents, attributes, errors and
retries, workflows as one trace, Go/Jaeger ``uber-trace-id`` read and written, bad headers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from machinery_aio import Arg, Chain, Chord, Config, Group, RetryTaskLater, Server, Signature, State
from machinery_aio.middlewares.opentelemetry import OpenTelemetryMiddleware
from machinery_aio.signature import new_task_uuid

# Go Machinery's producer with a Jaeger tracer writes the span context into Signature.Headers
# through opentracing's TextMap carrier: jaeger-client-go's SpanContext.String(), that is
# "<trace id>:<span id>:<parent span id>:<flags>" in hex (64-bit trace ids zero-padded to 16
# digits by current clients, unpadded by clients before 2.22; 128-bit ids as 32 digits).
GO_JAEGER_HEADERS = [
    ("5b8aa5a2d2c872e8:321d0e3b9e7c9a1f:0000000000000000:1", 0x5B8AA5A2D2C872E8, 0x321D0E3B9E7C9A1F),
    (
        "463ac35c9f6413ad48485a3953bb6124:a2fb4a1d1a96d312:0:1",
        0x463AC35C9F6413AD48485A3953BB6124,
        0xA2FB4A1D1A96D312,
    ),
    ("b8aa5a2d2c872e8:21d0e3b9e7c9a1f:b8aa5a2d2c872e8:3", 0xB8AA5A2D2C872E8, 0x21D0E3B9E7C9A1F),
]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
async def server(unique: str, provider: TracerProvider) -> AsyncIterator[Server]:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=unique)
    server = Server(config, middlewares=[OpenTelemetryMiddleware(provider)])

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    @server.task("divide")
    async def divide(x: int, y: int) -> float:
        return x / y

    asked: set[str] = set()

    @server.task("later")
    async def later(reason: str) -> str:
        if reason not in asked:  # once per reason
            asked.add(reason)
            raise RetryTaskLater(reason, 0.01)
        return "done"

    @server.task("total")
    async def total(*values: int) -> int:
        return sum(values)

    yield server
    await server.close()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def sig(name: str, *values: int | str) -> Signature:
    return Signature(uuid=new_task_uuid(), name=name, args=[Arg.of(v) for v in values])


async def test_a_chain_is_one_trace_each_run_parented_to_the_send_that_published_it(
    server: Server, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    links = [sig("add", 1, 2), sig("add", 3), sig("add", 4)]
    tracer = provider.get_tracer("test")
    async with server.new_worker("otel", 2):
        with tracer.start_as_current_span("caller") as caller:
            result = await server.send_chain(Chain(*links))
        assert await result.get(timeout=10) == 10
    spans = by_name(exporter)
    sends, runs = spans["send add"], spans["run add"]
    assert len(sends) == len(runs) == 3
    assert {trace_id(s) for s in sends + runs} == {caller.get_span_context().trace_id}
    sends.sort(key=lambda s: s.start_time or 0)
    runs.sort(key=lambda s: s.start_time or 0)
    assert parent_of(sends[0]) == caller.get_span_context().span_id
    for link, send, run in zip(links, sends, runs, strict=True):
        assert send.kind is SpanKind.PRODUCER
        assert run.kind is SpanKind.CONSUMER
        assert parent_of(run) == span_id(send)
        assert run.attributes is not None
        assert send.attributes is not None
        assert send.attributes["messaging.message.id"] == run.attributes["messaging.message.id"] == link.uuid
        assert run.attributes["messaging.destination.name"] == server.config.default_queue
        assert send.attributes["messaging.destination.name"] == server.config.default_queue
        assert run.attributes["messaging.system"] == "machinery"
        assert run.attributes["machinery.task.outcome"] == "SUCCESS"
        assert run.attributes["machinery.task.retry_count"] == 0
    for run, next_send in zip(runs, sends[1:], strict=False):
        assert parent_of(next_send) == span_id(run)  # the next link is sent while its run is current
    # the message carries the PRODUCER span that published it
    traceparent = links[0].headers["traceparent"]  # type: ignore[index]
    _version, trace_hex, parent_hex, flags = traceparent.split("-")
    assert (trace_hex, parent_hex) == (f"{trace_id(sends[0]):032x}", f"{span_id(sends[0]):016x}")
    assert int(flags, 16) & 1  # sampled


async def test_a_chord_is_one_trace_under_a_send_chord_span(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    members = [sig("add", i, i) for i in range(3)]
    callback = sig("total")
    async with server.new_worker("otel", 3):
        result = await server.send_chord(Chord(Group(*members), callback))
        assert await result.get(timeout=10) == 6
    spans = by_name(exporter)
    [chord] = spans["send chord"]
    assert chord.attributes is not None
    assert chord.attributes["machinery.group.task_count"] == 3
    assert len(spans["send add"]) == 3
    assert all(parent_of(s) == span_id(chord) for s in spans["send add"])
    [send_total] = spans["send total"]
    [run_total] = spans["run total"]
    member_runs = {span_id(r) for r in spans["run add"]}
    assert parent_of(send_total) in member_runs  # sent by the member that finished last
    assert parent_of(run_total) == span_id(send_total)
    everything = exporter.get_finished_spans()
    assert len({trace_id(s) for s in everything}) == 1


async def test_a_group_sent_without_a_current_span_is_still_one_trace(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    async with server.new_worker("otel", 2):
        results = await server.send_group(Group(sig("add", 1, 1), sig("add", 2, 2)))
        assert [await r.get(timeout=10) for r in results] == [2, 4]
    spans = by_name(exporter)
    [group] = spans["send group"]
    assert group.parent is None
    assert len({trace_id(s) for s in exporter.get_finished_spans()}) == 1


async def test_failures_and_retries_are_recorded_on_the_run_span(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    retried = sig("later", "not yet")
    failing = sig("divide", 1, 0)
    async with server.new_worker("otel", 2):
        res = await server.send_task(failing)
        with pytest.raises(Exception, match="division by zero"):
            await res.get(timeout=10)
        assert await (await server.send_task(retried)).get(timeout=10) == "done"
    spans = by_name(exporter)
    [failed] = spans["run divide"]
    assert failed.status.status_code is StatusCode.ERROR
    assert "division by zero" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.attributes is not None
    assert failed.attributes["machinery.task.outcome"] == "FAILURE"
    [first, *_] = sorted(spans["run later"], key=lambda s: s.start_time or 0)
    assert first.attributes is not None
    assert first.attributes["machinery.task.outcome"] == "RETRY"
    [retry] = [e for e in first.events if e.name == "retry"]
    assert retry.attributes is not None
    assert retry.attributes["machinery.retry.reason"] == "not yet"
    assert first.status.status_code is StatusCode.UNSET  # RetryTaskLater is no error
    # the re-publish is a child of the run that asked for it, in the same trace
    republish = [s for s in spans["send later"] if s.parent is not None and parent_of(s) == span_id(first)]
    assert len(republish) == 1


async def test_an_error_driven_retry_marks_the_run_span_as_an_error(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    failing = sig("divide", 1, 0)
    failing.retry_count = 1
    async with server.new_worker("otel", 1):
        res = await server.send_task(failing)
        with pytest.raises(Exception, match="division by zero"):
            await res.get(timeout=15)
    runs = sorted(by_name(exporter)["run divide"], key=lambda s: s.start_time or 0)
    assert [r.attributes["machinery.task.outcome"] for r in runs if r.attributes] == ["RETRY", "FAILURE"]
    assert [r.attributes["machinery.task.retry_count"] for r in runs if r.attributes] == [1, 0]
    assert runs[0].status.status_code is StatusCode.ERROR
    assert [e.name for e in runs[0].events] == ["retry", "exception"]
    assert len({trace_id(s) for s in exporter.get_finished_spans()}) == 1


@pytest.mark.parametrize(("header", "trace_id_", "parent_id"), GO_JAEGER_HEADERS)
async def test_a_go_jaeger_uber_trace_id_continues_that_trace(
    server: Server, exporter: InMemorySpanExporter, header: str, trace_id_: int, parent_id: int
) -> None:
    from_go = sig("add", 2, 3)
    from_go.headers = {"uber-trace-id": header}
    await server.broker.publish(from_go)  # as a Go producer: the broker only, no middleware
    async with server.new_worker("otel", 1):
        assert await server.get_async_result(from_go.uuid).get(timeout=10) == 5
    [run] = by_name(exporter)["run add"]
    assert trace_id(run) == trace_id_
    assert parent_of(run) == parent_id
    assert run.parent is not None
    assert run.parent.is_remote


async def test_w3c_wins_over_a_stale_uber_trace_id(server: Server, exporter: InMemorySpanExporter) -> None:
    both = sig("add", 2, 3)
    both.headers = {
        "uber-trace-id": GO_JAEGER_HEADERS[0][0],
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    await server.broker.publish(both)
    async with server.new_worker("otel", 1):
        assert await server.get_async_result(both.uuid).get(timeout=10) == 5
    [run] = by_name(exporter)["run add"]
    assert (trace_id(run), parent_of(run)) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)


async def test_jaeger_headers_are_written_when_asked_in_go_jaegers_format(
    unique: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=unique)
    async with Server(config, middlewares=[OpenTelemetryMiddleware(provider, jaeger_headers=True)]) as server:
        sent = sig("add", 1, 1)
        await server.send_task(sent)
    [send] = by_name(exporter)["send add"]
    assert sent.headers is not None
    trace_hex, span_hex, parent_hex, flags = sent.headers["uber-trace-id"].split(":")
    assert (int(trace_hex, 16), int(span_hex, 16), int(parent_hex, 16)) == (trace_id(send), span_id(send), 0)
    assert int(flags, 16) & 1  # sampled
    assert sent.headers["traceparent"].split("-")[2] == span_hex
    assert all(isinstance(v, str) for v in sent.headers.values())  # Go reads strings only


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": 7, "uber-trace-id": ["not", "a", "string"]},
        {"traceparent": "00-zz-yy-01"},
        {"uber-trace-id": "nothing:to:see"},
        {"uber-trace-id": "0:0:0:1"},
    ],
)
async def test_bad_trace_headers_start_a_new_trace_and_the_task_runs(
    server: Server, exporter: InMemorySpanExporter, headers: dict[str, object]
) -> None:
    odd = sig("add", 1, 1)
    odd.headers = headers
    await server.broker.publish(odd)
    async with server.new_worker("otel", 1):
        assert await server.get_async_result(odd.uuid).get(timeout=10) == 2
    [run] = by_name(exporter)["run add"]
    assert run.parent is None
    assert (await server.get_async_result(odd.uuid).get_state()).state is State.SUCCESS


async def test_without_an_sdk_nothing_is_written_and_tasks_run(unique: str) -> None:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=unique)
    middleware = OpenTelemetryMiddleware(trace.NoOpTracerProvider())
    async with Server(config, middlewares=[middleware]) as server:

        @server.task("add")
        async def add(x: int, y: int) -> int:
            return x + y

        async with server.new_worker("otel-off", 1):
            sent = sig("add", 1, 2)
            assert await (await server.send_task(sent)).get(timeout=10) == 3
        assert sent.headers == {}


def test_the_default_is_the_global_provider() -> None:
    # with no argument the middleware follows the global provider (a proxy until one is set)
    middleware = OpenTelemetryMiddleware()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) is middleware._off()
