"""aiohttp: ``setup(app, server)`` adds a cleanup context that connects and closes the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..server import Server

__all__ = ["MACHINERY_KEY", "setup"]

MACHINERY_KEY = web.AppKey("machinery", Server)
"""``app[MACHINERY_KEY]`` is the Server given to :func:`setup`."""


def setup(
    app: web.Application,
    server: Server,
    *,
    run_worker: bool = False,
    concurrency: int = 10,
    **worker_options: Any,
) -> None:
    """Connect ``server`` on start-up (and run a worker with ``run_worker``); close on cleanup."""

    async def machinery_ctx(_: web.Application) -> AsyncIterator[None]:
        async with server:
            if run_worker:
                async with server.new_worker(concurrency=concurrency, **worker_options):
                    yield
            else:
                yield

    app[MACHINERY_KEY] = server
    app.cleanup_ctx.append(machinery_ctx)
