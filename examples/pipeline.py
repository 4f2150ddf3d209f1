"""A data pipeline: a chain, a chord, and what happens when a step fails.

Run it with ``python examples/pipeline.py`` (memory://, an embedded worker; exits 0).
"""

from __future__ import annotations

import asyncio

from machinery_aio import Chain, Chord, Config, Group, Server, Signature, TaskFailedError

server = Server(Config.from_env())

SOURCES = {"north": [3, 1, -2, 8], "south": [5, 5], "east": [-1, 4]}
alerts: list[str] = []
both_alerted = asyncio.Event()


@server.task("fetch")
async def fetch(source: str) -> list[int]:
    if source not in SOURCES:
        raise LookupError(f"no source called {source!r}")
    return SOURCES[source]


@server.task("clean")
async def clean(numbers: list[int]) -> list[int]:
    return [n for n in numbers if n >= 0]


@server.task("total")
async def total(numbers: list[int]) -> int:
    return sum(numbers)


@server.task("merge")
async def merge(*parts: list[int]) -> int:
    """A chord callback: gets every member's result, in group order."""
    return sum(sum(part) for part in parts)


@server.task("alert")
async def alert(error: str, *args: str) -> None:
    """An OnError callback: gets the error text first, then its own arguments."""
    alerts.append(f"{error} ({', '.join(args) or 'no details'})")
    if len(alerts) == 2:
        both_alerted.set()


async def main() -> None:
    async with server.new_worker("pipeline", concurrency=10):
        # fetch -> clean -> total: each link gets the previous link's result appended.
        # Links that get their input from the previous link are built by name, without args.
        chain = Chain(fetch.signature("north"), Signature(name="clean"), Signature(name="total"))
        print("north, cleaned and summed:", await (await server.send_chain(chain)).get(timeout=10))

        # A chord: fetch every source in parallel, then merge them.
        chord = Chord(Group(*(fetch.signature(name) for name in SOURCES)), Signature(name="merge"))
        print("all sources merged:", await (await server.send_chord(chord)).get(timeout=10))

        # The failure path: a link fails, its OnError callback runs, the rest of the chain doesn't.
        broken = fetch.signature("west")
        broken.on_error = [alert.signature("fetch west")]
        failing = await server.send_chain(Chain(broken, Signature(name="clean"), Signature(name="total")))
        try:
            await failing.get(timeout=10)
        except TaskFailedError as exc:
            print("chain failed as expected:", exc.error)
        states = [s.state.value for s in await failing.get_states()]
        print("chain states:", states)  # FAILURE, then PENDING links that were never sent

        # A failed chord member: the callback is not run and gets a FAILURE with the reason.
        callback = Signature(name="merge")
        callback.on_error = [alert.signature("merge")]
        chord = Chord(Group(fetch.signature("south"), fetch.signature("west")), callback)
        chord_result = await server.send_chord(chord)
        try:
            await chord_result.callback.get(timeout=10)
        except TaskFailedError as exc:
            print("chord callback failed as expected:", exc.error)
        await asyncio.wait_for(both_alerted.wait(), 10)  # the alert callbacks run on the worker
    print("alerts:", *alerts, sep="\n  ")


if __name__ == "__main__":
    asyncio.run(main())
