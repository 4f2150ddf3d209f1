"""FastAPI/Starlette: ``FastAPI(lifespan=machinery_lifespan(server))``.

No import of FastAPI is needed: a lifespan is a function taking the app and
returning an async context manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ..server import Server

__all__ = ["machinery_lifespan"]


def machinery_lifespan(
    server: Server, *, run_worker: bool = False, concurrency: int = 10, **worker_options: Any
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan that connects ``server`` and, with ``run_worker``, runs an embedded worker.

    The server is also put on ``app.state.machinery`` when the app has a ``state``.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state = getattr(app, "state", None)
        if state is not None:
            state.machinery = server
        async with server:
            if run_worker:
                async with server.new_worker(concurrency=concurrency, **worker_options):
                    yield
            else:
                yield

    return lifespan
