"""The worker's summary line and the progress ``send`` shows."""

from __future__ import annotations

import io

import pytest

from machinery_aio import Server, State
from machinery_aio.summary import Progress, TerminalSummary


async def test_the_summary_line_counts_outcomes_and_the_rate(memory_server: Server) -> None:
    @memory_server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    @memory_server.task("fail")
    async def fail() -> None:
        raise ValueError("no")

    worker = memory_server.new_worker("summed", 2)
    summary = TerminalSummary(worker, io.StringIO())
    async with worker:
        for i in range(3):
            assert await (await add.delay(i, 1)).get(timeout=10) == i + 1
        with pytest.raises(Exception, match="no"):
            await (await fail.delay()).get(timeout=10)
        first = summary.line()
        second = summary.line()
    assert first.startswith("[summed] processed 4 (+4, ")
    assert first.endswith("/s), failed 1, retried 0, running 0")
    assert second.startswith("[summed] processed 4 (+0, 0.0/s)")


def test_progress_shows_each_state_once() -> None:
    out = io.StringIO()
    progress = Progress(out)
    for state in (State.PENDING, State.PENDING, State.STARTED, State.SUCCESS, State.SUCCESS):
        progress.show(state)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["PENDING", "STARTED", "SUCCESS"]


def test_a_summary_interval_must_be_positive(memory_server: Server) -> None:
    with pytest.raises(ValueError, match="positive"):
        TerminalSummary(memory_server.new_worker("w", 1), io.StringIO(), interval=0)
