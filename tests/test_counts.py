"""TaskCounts' latest failures, as a worker's heartbeat reports them (the dashboard shows them)."""

from __future__ import annotations

from machinery_aio import Arg, Config, Server, Signature, testing
from machinery_aio.counts import ERROR_CHARS, RECENT_FAILURES, TaskCounts
from machinery_aio.heartbeat import Heartbeat, live_workers, registry_of
from machinery_aio.state import State


def test_only_final_failures_are_noted_the_latest_kept_and_long_errors_cut() -> None:
    counts = TaskCounts()
    counts.add(State.RETRY)
    assert list(counts.recent_failures) == []
    for n in range(RECENT_FAILURES + 2):
        counts.note_failure(f"task_{n}", "boom", "x" * (ERROR_CHARS * 2))
    assert [uuid for _, uuid, _, _ in counts.recent_failures] == [
        f"task_{n}" for n in range(2, RECENT_FAILURES + 2)
    ]
    assert all(len(error) == ERROR_CHARS for _, _, _, error in counts.recent_failures)


async def test_a_worker_reports_its_final_failures_in_its_heartbeat(memory_config: Config) -> None:
    server = Server(memory_config)

    @server.task("boom")
    async def boom(n: int) -> int:
        raise ValueError(f"bad {n}")

    @server.task("fine")
    async def fine(n: int) -> int:
        return n

    async with testing.running_worker(server, 2) as worker:
        sigs = [
            Signature(name=name, args=[Arg(type="int64", value=n)]) for n, name in enumerate(["boom", "fine"])
        ]
        for sig in sigs:
            await server.send_task(sig)
        await testing.wait_idle(worker)
        registry = registry_of(server.backend, server.broker)
        assert registry is not None
        await Heartbeat(worker, registry).beat()
        [info] = [w for w in await live_workers(registry) if w.name == worker.tag]
    [failure] = info.recent_failures
    assert (failure.uuid, failure.name) == (sigs[0].uuid, "boom")
    assert "bad 0" in failure.error
    assert info.failed == 1
