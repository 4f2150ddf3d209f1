"""Progress: ``ctx.set_progress`` from a running task on memory, Redis and RabbitMQ; the
stored record keeps Go's seven keys first; throttling; bad values."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from machinery_aio import Config, Progress, Server, Signature, State, TaskContext, TaskState
from machinery_aio import progress as progress_module
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.progress import ProgressReporter
from tests.contract.conftest import DRIVERS, Driver

pytestmark = pytest.mark.timeout(120)

CONTROL_DRIVERS = [d for d in DRIVERS if d.id in ("memory", "redis", "rabbitmq")]


@pytest.fixture(params=CONTROL_DRIVERS, ids=[d.id for d in CONTROL_DRIVERS])
async def server(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Server]:
    driver: Driver = request.param
    driver.require_servers()
    config = driver.config(unique)
    made = Server(config)
    yield made
    await made.close()
    if driver.cleanup is not None:
        await driver.cleanup(
            Config(broker=config.broker, result_backend=config.result_backend), unique, set()
        )


async def test_a_running_task_reports_rising_progress(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.0)  # every report is stored
    gates = [asyncio.Event() for _ in range(3)]

    @server.task("steps")
    async def steps(ctx: TaskContext, count: int) -> str:
        for i in range(count):
            await ctx.set_progress(i + 1, count, f"step {i + 1}")
            await gates[i].wait()
        return "done"

    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        result = await steps.delay(3)
        seen: list[float] = []
        for gate in gates:
            state = await result.wait_progress(timeout=30)
            assert state.progress is not None
            assert state.state is State.STARTED
            assert state.task_name == "steps"  # the record keeps what PENDING stored
            assert state.progress.total == 3
            assert state.progress.message == f"step {state.progress.current}"
            seen.append(state.progress.current)
            gate.set()
        assert await result.get(timeout=30) == "done"
    assert seen == [1, 2, 3]
    final = await result.get_state()
    assert final.state is State.SUCCESS
    assert final.progress is None
    assert final.task_name == "steps"
    assert final.created_at.year > 1  # the PENDING's CreatedAt survived the progress records


def test_the_record_keeps_gos_keys_first() -> None:
    state = TaskState.new(Signature(uuid="task_1", name="steps"), State.STARTED)
    plain = state.to_json()
    assert list(json.loads(plain)) == [
        "TaskUUID",
        "TaskName",
        "State",
        "Results",
        "Error",
        "CreatedAt",
        "TTL",
    ]
    state.progress = Progress(current=2, total=5, message="rows")
    with_progress = state.to_json()
    assert with_progress.startswith(plain[:-1] + b',"Progress":')
    assert json.loads(with_progress)["Progress"] == {"Current": 2, "Total": 5, "Message": "rows"}
    assert TaskState.from_json(with_progress).progress == state.progress


async def test_reports_are_throttled(unique: str) -> None:
    backend = MemoryBackend(Config(), f"memory://{unique}")
    reporter = ProgressReporter(backend, Signature(uuid=f"task_{unique}", name="loop"))
    stored = [await reporter.report(i, 1000) for i in range(999)]
    assert stored[0] is True
    assert not any(stored[1:])  # a tight loop stores one report per 0.5 s
    assert await reporter.report(1000, 1000) is True  # reaching the total is always stored
    state = await backend.get_state(f"task_{unique}")
    assert state is not None
    assert state.progress == Progress(current=1000, total=1000)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("3",), TypeError, "current must be a number"),
        ((True,), TypeError, "current must be a number"),
        ((-1,), ValueError, "0 or more"),
        ((float("nan"),), ValueError, "finite"),
        ((1, "10"), TypeError, "total must be a number"),
        ((1, 10, 5), TypeError, "message must be a string"),
    ],
)
async def test_bad_progress_values_are_refused(
    args: tuple[object, ...], error: type[Exception], match: str
) -> None:
    ctx = TaskContext(Signature(uuid="task_x", name="x"))
    with pytest.raises(error, match=match):
        await ctx.set_progress(*args)  # type: ignore[arg-type]
    await ctx.set_progress(1, 2, "outside a worker: nothing is stored")
