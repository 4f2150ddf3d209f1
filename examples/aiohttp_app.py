"""An aiohttp service that sends tasks, with an embedded worker.

Start it with ``python examples/aiohttp_app.py --port 8080``, then
``curl localhost:8080/`` and ``curl 'localhost:8080/square?n=7'`` (sends the task, waits for it).
"""

from __future__ import annotations

import argparse

from aiohttp import web

from machinery_aio import Config, Server, TaskFailedError
from machinery_aio.integrations.aiohttp import MACHINERY_KEY, setup

server = Server(Config.from_env())  # memory:// when BROKER is unset


@server.task("square")
async def square(n: int) -> int:
    if n < 0:
        raise ValueError(f"no negative numbers, got {n}")
    return n * n


async def index(request: web.Request) -> web.Response:
    machinery = request.app[MACHINERY_KEY]
    return web.json_response({"tasks": machinery.get_registered_task_names()})


async def send_square(request: web.Request) -> web.Response:
    try:
        n = int(request.query.get("n", "2"))
    except ValueError:
        return web.json_response({"error": "n must be an integer"}, status=400)
    result = await square.delay(n)
    try:
        value = await result.get(timeout=10)
    except TaskFailedError as exc:
        return web.json_response({"task_uuid": result.task_uuid, "error": exc.error}, status=422)
    return web.json_response({"task_uuid": result.task_uuid, "result": value})


def make_app() -> web.Application:
    app = web.Application()
    setup(app, server, run_worker=True)  # connects on start-up, runs a worker, closes on cleanup
    app.router.add_get("/", index)
    app.router.add_get("/square", send_square)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args()
    web.run_app(make_app(), host=options.host, port=options.port)
