"""An app for the dashboard's browser tests, configured from Go's environment variables
(BROKER, RESULT_BACKEND, DEFAULT_QUEUE).

``machinery-aio worker -A tests.apps.dashboard_app:server`` runs its worker,
``machinery-aio dashboard -A tests.apps.dashboard_app:server`` its dashboard, and
``uvicorn tests.apps.dashboard_app:host`` a FastAPI app with the dashboard mounted at /tasks.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.dashboard import dashboard_app

server = Server(Config.from_env())


@server.task("echo")
async def echo(text: str) -> str:
    return text


@server.task("nap")
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@server.task("boom")
async def boom(text: str) -> str:
    raise RuntimeError(f"boom: {text}")


server.register_periodic_task(
    "0 6 * * 1", "weekly-report", Signature(name="echo", args=[Arg(type="string", value="report")])
)

host = FastAPI()
host.mount("/tasks", dashboard_app(server))
