"""machinery-aio quick start: a worker in this process, on the embedded memory:// default.

Run it with ``scripts/quickstart`` (or ``python examples/quickstart.py`` once installed).
It needs no server. Swap ``Config()`` for
``Config(broker="redis://127.0.0.1:6379/0", result_backend="redis://127.0.0.1:6379/0")``
and the same code runs on Redis, with Go Machinery workers able to share the queue.
"""

from __future__ import annotations

import asyncio
import time

from machinery_aio import Chain, Chord, Config, Group, RetryTaskLater, Server, TaskContext

server = Server(Config())  # no URLs: the embedded memory:// broker and backend


@server.task("add")
async def add(*numbers: int) -> int:
    return sum(numbers)


@server.task("multiply")
def multiply(*numbers: int) -> int:  # a plain function runs in a thread pool
    product = 1
    for number in numbers:
        product *= number
    return product


attempts: dict[str, int] = {}


@server.task("flaky_fetch")
async def flaky_fetch(ctx: TaskContext, url: str) -> str:
    """Fails twice, then succeeds: RetryTaskLater re-queues it with the same UUID."""
    attempts[ctx.task_uuid] = attempts.get(ctx.task_uuid, 0) + 1
    if attempts[ctx.task_uuid] < 3:
        raise RetryTaskLater(f"{url} is busy", delay=0.2)
    return f"fetched {url} after {attempts[ctx.task_uuid]} attempts"


async def main() -> None:
    async with server.new_worker("quickstart", concurrency=10):
        # One task; the typed handle infers Go arg types (int -> int64).
        result = await add.delay(1, 1)
        print("add(1, 1) =", await result.get(timeout=10))

        # A chain: each link gets the previous link's result appended to its args.
        chain = Chain(add.signature(1, 1), add.signature(5, 5), multiply.signature(4))
        chain_result = await server.send_chain(chain)
        print("chain add(1,1) -> add(5,5) -> multiply(4) =", await chain_result.get(timeout=10))

        # A chord: the callback gets every member's result, in group order.
        chord = Chord(Group(add.signature(1, 1), add.signature(5, 5)), multiply.signature())
        chord_result = await server.send_chord(chord)
        print("chord multiply(add(1,1), add(5,5)) =", await chord_result.get(timeout=10))

        # A group: members run in parallel.
        group_results = await server.send_group(Group(add.signature(1, 1), add.signature(5, 5)))
        print("group", [await r.get(timeout=10) for r in group_results])

        # A retry: the task raises RetryTaskLater twice before it succeeds.
        retried = await flaky_fetch.delay("https://example.com")
        print("retry:", await retried.get(timeout=10))

        # An ETA: the broker holds the task until it is due.
        started = time.monotonic()
        later = await add.with_options(countdown=1.0).delay(20, 22)
        value = await later.get(timeout=10)
        print(f"eta: add(20, 22) = {value}, ran after {time.monotonic() - started:.1f} s")

        state = await later.get_state()
        print("state of that task:", state.state.value, state.task_uuid)


if __name__ == "__main__":
    asyncio.run(main())
