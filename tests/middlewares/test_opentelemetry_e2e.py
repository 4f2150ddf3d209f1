"""A chain sent from this process and run by a worker process (``machinery-aio worker`` over
Redis, the SDK configured by the app) is one trace with the right parents; a message carrying
Go/Jaeger's ``uber-trace-id`` continues Go's trace in that worker."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from machinery_aio import Arg, Chain, Config, Server, Signature
from machinery_aio.middlewares.opentelemetry import OpenTelemetryMiddleware
from machinery_aio.signature import new_task_uuid
from tests.conftest import require_server
from tests.support.processes import StartCLI

REDIS_URL = "redis://127.0.0.1:6379/3"
GO_TRACE, GO_SPAN = 0x5B8AA5A2D2C872E8, 0x321D0E3B9E7C9A1F
GO_HEADER = f"{GO_TRACE:016x}:{GO_SPAN:016x}:0000000000000000:1"  # jaeger-client-go's TextMap


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_chain_run_by_a_worker_process_is_one_trace(
    cli_process: StartCLI, unique: str, tmp_path: Path
) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    spans_file = tmp_path / "worker-spans.jsonl"
    env = {
        "BROKER": REDIS_URL,
        "RESULT_BACKEND": REDIS_URL,
        "DEFAULT_QUEUE": f"{unique}_q",
        "RESULTS_EXPIRE_IN": "300",
        "OTEL_SPANS_FILE": str(spans_file),
    }
    worker = cli_process("worker", "-A", "tests.apps.observed_app:server", "--no-scheduler", env=env)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = Config(broker=REDIS_URL, result_backend=REDIS_URL, default_queue=f"{unique}_q")
    config.results_expire_in = 300
    links = [
        Signature(name="add", args=[Arg.of(1), Arg.of(2)]),
        Signature(name="add", args=[Arg.of(3)]),
        Signature(name="add", args=[Arg.of(4)]),
    ]
    from_go = Signature(
        uuid=new_task_uuid(), name="add", args=[Arg.of(5)], headers={"uber-trace-id": GO_HEADER}
    )
    async with Server(config, middlewares=[OpenTelemetryMiddleware(provider)]) as server:
        worker.wait_for("consuming")
        with provider.get_tracer("test").start_as_current_span("caller") as caller:
            chain = await server.send_chain(Chain(*links))
        assert await chain.get(timeout=60) == 10
        await server.broker.publish(from_go)  # as a Go producer would: no middleware of ours
        assert await server.get_async_result(from_go.uuid).get(timeout=60) == 5
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.finish, 60) == 0, worker.stderr
    provider.shutdown()

    ours = {s.name: s for s in exporter.get_finished_spans()}
    send_first = ours["send add"]
    assert send_first.context is not None
    trace_hex = f"0x{caller.get_span_context().trace_id:032x}"
    assert links[0].headers is not None  # the published message names the PRODUCER span
    assert links[0].headers["traceparent"].split("-")[2] == f"{send_first.context.span_id:016x}"
    theirs = read_spans(spans_file)
    by_uuid = {s["attributes"]["messaging.message.id"]: s for s in theirs if s["name"] == "run add"}
    sends = {s["attributes"]["messaging.message.id"]: s for s in theirs if s["name"] == "send add"}
    # link 1: sent here, run there; links 2 and 3: sent by the worker while the previous link ran
    first = by_uuid[links[0].uuid]
    assert first["kind"] == "SpanKind.CONSUMER"
    assert first["parent_id"] == f"0x{send_first.context.span_id:016x}"
    for previous, link in itertools.pairwise(links):
        run, send = by_uuid[link.uuid], sends[link.uuid]
        assert send["kind"] == "SpanKind.PRODUCER"
        assert run["parent_id"] == send["context"]["span_id"]
        assert send["parent_id"] == by_uuid[previous.uuid]["context"]["span_id"]
    chain_spans = [by_uuid[link.uuid] for link in links] + [sends[link.uuid] for link in links[1:]]
    assert {s["context"]["trace_id"] for s in chain_spans} == {trace_hex}
    # the Go trace continues: same trace id, parent = Go's span
    go_run = by_uuid[from_go.uuid]
    assert go_run["context"]["trace_id"] == f"0x{GO_TRACE:032x}"
    assert go_run["parent_id"] == f"0x{GO_SPAN:016x}"
