"""A FastAPI service that sends tasks and reports their results.

Start it (an embedded worker runs the tasks in the same process):

    EMBEDDED_WORKER=1 uvicorn examples.fastapi_app:app --port 8000

then ``curl localhost:8000/`` and ``curl -X POST 'localhost:8000/add?a=2&b=3'``. Without
``EMBEDDED_WORKER`` the service only sends: point ``BROKER`` and ``RESULT_BACKEND`` at Redis
and run ``machinery-aio worker -A examples.fastapi_app:server`` beside it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from fastapi import FastAPI

from machinery_aio import Config, Server, TaskFailedError
from machinery_aio.integrations.fastapi import machinery_lifespan

server = Server(Config.from_env())  # BROKER, RESULT_BACKEND ...; memory:// when unset


@server.task("add")
async def add(a: int, b: int) -> int:
    return a + b


@server.task("slugify")
def slugify(title: str) -> str:  # a plain function: runs in the worker's thread pool
    return "-".join(title.lower().split())


embedded = os.environ.get("EMBEDDED_WORKER", "") not in ("", "0")
app = FastAPI(lifespan=machinery_lifespan(server, run_worker=embedded))


@app.get("/")
async def index() -> dict[str, Any]:
    """What this service can do."""
    return {"tasks": server.get_registered_task_names(), "embedded_worker": embedded}


@app.post("/add")
async def send_add(a: int, b: int) -> dict[str, str]:
    result = await add.delay(a, b)
    return {"task_uuid": result.task_uuid}


@app.post("/slugify")
async def send_slugify(title: str) -> dict[str, str]:
    result = await slugify.delay(title)
    return {"task_uuid": result.task_uuid}


@app.get("/tasks/{task_uuid}")
async def task_state(task_uuid: str, wait: float = 0.0) -> dict[str, Any]:
    """The task's state; with ``wait`` (seconds), wait that long for it to finish first."""
    result = server.get_async_result(task_uuid)
    if wait > 0:
        with contextlib.suppress(TimeoutError, TaskFailedError):  # the state below says which
            await result.get(timeout=wait)
    state = await result.get_state()
    return {"state": state.state.value, "result": state.value, "error": state.error}
