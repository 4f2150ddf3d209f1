"""Go interop walkthrough: the bytes a Go Machinery service reads and writes.

Run it with ``python examples/go_interop.py`` (memory://; exits 0), or against the Redis
a Go service uses: ``python examples/go_interop.py --broker redis://127.0.0.1:6379/0``.

1. A task sent from Python, as the JSON a Go worker decodes (Go's 19 keys, Go type names).
2. A message exactly as Go's ``server.SendTask`` writes it, run by a Python worker.
3. The state a Go ``AsyncResult.Get`` reads back: Go's TaskState JSON.

The Go side of the same exchange (Machinery v2)::

    server.RegisterTask("add", func(a, b int64) (int64, error) { return a + b, nil })
    sig := &tasks.Signature{Name: "add", Args: []tasks.Arg{
        {Type: "int64", Value: 2}, {Type: "int64", Value: 3},
    }}
    result, _ := server.SendTask(sig)
    values, _ := result.Get(time.Millisecond * 50)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from machinery_aio import Arg, Config, Server, Signature

# What Go's SendTask publishes for add(2, 3) (one line on the wire; spread here to read).
GO_MESSAGE: dict[str, Any] = {
    "UUID": "task_5c1d6f3e-7f4a-4b59-9d0a-1f2e3d4c5b6a",
    "Name": "add",
    "RoutingKey": "machinery_tasks",
    "ETA": None,
    "GroupUUID": "",
    "GroupTaskCount": 0,
    "Args": [{"Name": "", "Type": "int64", "Value": 2}, {"Name": "", "Type": "int64", "Value": 3}],
    "Headers": {},
    "Priority": 0,
    "Immutable": False,
    "RetryCount": 0,
    "RetryTimeout": 0,
    "OnSuccess": None,
    "OnError": None,
    "ChordCallback": None,
    "BrokerMessageGroupId": "",
    "SQSReceiptHandle": "",
    "StopTaskDeletionOnError": False,
    "IgnoreWhenTaskNotRegistered": False,
}


async def main(broker: str) -> None:
    server = Server(Config(broker=broker, result_backend=broker, default_queue="machinery_tasks"))

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with server, server.new_worker("go-interop", concurrency=4):
        # 1. Python -> Go: the message body a Go worker reads (UUID and Headers filled in by the send).
        sig = add.signature(2, 3)
        sent = await server.send_task(sig)
        print("1. sent from Python:", sig.to_json().decode(), "->", await sent.get(timeout=10))

        # 2. Go -> Python: Go's bytes, pushed as a Go producer would, run by this worker.
        body = json.dumps(GO_MESSAGE, separators=(",", ":")).encode()
        await push(server, body)
        result = server.get_async_result(str(GO_MESSAGE["UUID"]), "add")
        print("2. Go's message ran on Python:", await result.get(timeout=10))

        # 3. Python -> Go: the state record a Go AsyncResult reads.
        state = await result.get_state()
        print("3. stored for Go:", state.to_json().decode())
        assert [(r.type, r.value) for r in state.results or ()] == [("int64", 5)]

        typed = Signature(name="add", args=[Arg(type="int64", value=40), Arg(type="int64", value=2)])
        print("   a send with explicit Go types:", await (await server.send_task(typed)).get(timeout=10))


async def push(server: Server, body: bytes) -> None:
    """Put raw bytes on the queue, as another language's producer does."""
    if server.broker.url.startswith("memory"):
        from machinery_aio.drivers.memory.broker import MemoryBroker

        assert isinstance(server.broker, MemoryBroker)
        await server.broker.push_raw("machinery_tasks", body)
    else:  # Redis: Go RPUSHes the body onto a LIST named after the queue
        from redis.asyncio import Redis

        client = Redis.from_url(server.broker.url)
        try:
            await client.rpush("machinery_tasks", body)
        finally:
            await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Go interop walkthrough")
    parser.add_argument("--broker", default="memory://", help="memory:// or a redis:// URL")
    asyncio.run(main(parser.parse_args().broker))
