"""The shop's tests: no conftest.py; the plugin finds the server from pyproject.toml."""

from __future__ import annotations

import httpx
import pytest
from shop.api import app
from shop.tasks import reserve_stock, server

from machinery_aio import Server, TaskFailedError
from machinery_aio.testing import SentTasks, wait_idle
from machinery_aio.worker import Worker

ORDER = {"order_id": 7, "email": "ada@example.com", "sku": "mug", "quantity": 2}


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop")


async def test_placing_an_order_sends_the_tasks(machinery_server: Server, machinery_sent: SentTasks) -> None:
    assert machinery_server is server  # the shop's own server, on memory:// during the test
    async with client() as http:
        response = await http.post("/orders", json=ORDER)
    assert response.status_code == 200
    machinery_sent.assert_sent("reserve_stock", "mug", 2)
    machinery_sent.assert_sent("send_receipt", 7, "ada@example.com")


async def test_the_tasks_run_on_a_worker(machinery_server: Server, machinery_worker: Worker) -> None:
    async with client() as http:
        tasks = (await http.post("/orders", json=ORDER)).json()
    await wait_idle(machinery_worker)
    receipt = await machinery_server.get_async_result(tasks["receipt_task"]).get(timeout=5)
    assert receipt == "receipt for order 7 sent to ada@example.com"


async def test_too_large_an_order_fails_the_task(machinery_server: Server, machinery_worker: Worker) -> None:
    result = await reserve_stock.delay("mug", 11)
    with pytest.raises(TaskFailedError, match="only 10 mug in stock"):
        await result.get(timeout=5)
