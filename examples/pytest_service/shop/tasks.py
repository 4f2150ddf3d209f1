"""The shop's tasks and its Server (Redis in production, from BROKER / RESULT_BACKEND)."""

from __future__ import annotations

from machinery_aio import Config, Server

server = Server(Config.from_env())


@server.task("send_receipt")
async def send_receipt(order_id: int, email: str) -> str:
    return f"receipt for order {order_id} sent to {email}"


@server.task("reserve_stock")
async def reserve_stock(sku: str, quantity: int) -> int:
    if quantity > 10:
        raise ValueError(f"only 10 {sku} in stock")
    return 10 - quantity
