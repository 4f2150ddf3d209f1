"""AMQP connections: a script that never closes its server exits quietly."""

from __future__ import annotations

import pytest

from tests.support.drivers import run_left_open
from tests.support.rabbitmq import AMQP_URL, Cleanup


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
async def test_a_script_exits_quietly_whether_or_not_it_closes_its_server(
    unique: str, cleanup: Cleanup, close: bool
) -> None:
    queue, exchange = f"{unique}_tasks", f"{unique}_exchange"
    cleanup.queues.update({queue, f"{queue}.dead"})
    cleanup.exchanges.add(exchange)
    env = {"BROKER": AMQP_URL, "RESULT_BACKEND": AMQP_URL, "DEFAULT_QUEUE": queue, "AMQP_EXCHANGE": exchange}
    code, out, err = await run_left_open(env, close=close)
    cleanup.queues.add(out.strip())  # the task's result queue
    assert code == 0, err
    assert out.strip().startswith("task_")
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed"):
        assert noise not in err
    if close:
        assert err == ""
    else:  # one line at most, saying what happened
        assert len(err.splitlines()) == 1, err
        assert "still open when the event loop ended" in err
