"""The shop's HTTP API: placing an order sends two tasks."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from machinery_aio.integrations.fastapi import machinery_lifespan

from .tasks import reserve_stock, send_receipt, server

app = FastAPI(lifespan=machinery_lifespan(server))


class Order(BaseModel):
    order_id: int
    email: str
    sku: str
    quantity: int


@app.get("/")
async def index() -> dict[str, Any]:
    return {"service": "shop", "tasks": server.get_registered_task_names()}


@app.post("/orders")
async def place_order(order: Order) -> dict[str, str]:
    stock = await reserve_stock.delay(order.sku, order.quantity)
    receipt = await send_receipt.delay(order.order_id, order.email)
    return {"stock_task": stock.task_uuid, "receipt_task": receipt.task_uuid}
