"""The dashboard's ASGI app: server-rendered pages, a JSON feed for live updates, POST actions."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..log import get_logger
from ..runner import error_text
from ..server import Server
from ..urls import mask_secrets
from .data import Reader, TaskView, dead_letter_id, signature_of, worker_row
from .security import AUTH_ENV, BasicAuth, SecurityHeaders, csrf_ok, new_csrf_token, parse_auth

__all__ = ["dashboard_app"]

logger = get_logger("machinery_aio.dashboard")

Endpoint = Callable[[Request], Awaitable[Response]]

HERE = Path(__file__).parent
TASK_UUID = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
QUEUE_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")
DONE = {
    "requeued": "requeued {n} dead letter(s)",
    "deleted": "deleted {n} dead letter(s)",
    "purged": "purged {n} task(s)",
    "revoked": "revoked {n} task(s): if not started, it never runs",
    "terminated": "revoked {n} task(s): a running copy is being cancelled where it runs",
    "finished": "the task had already finished: nothing was revoked",
}


def dashboard_app(server: Server, *, auth: str | None = None, refresh_seconds: float = 2.0) -> Starlette:
    """The dashboard for ``server`` as an ASGI app, to serve or to mount
    (``app.mount("/tasks", dashboard_app(server))``); it connects on its first request.

    ``auth`` (``user:password``, else the ``MACHINERY_DASHBOARD_AUTH`` environment variable)
    turns on HTTP basic auth for every page.
    """
    credentials = auth if auth is not None else os.environ.get(AUTH_ENV) or None
    middleware = [Middleware(SecurityHeaders)]
    if credentials is not None:
        user, password = parse_auth(credentials)
        middleware.append(Middleware(BasicAuth, user=user, password=password))
    views = _Views(server, refresh_seconds)
    guard = views.guard
    routes = [
        Route("/", guard(views.overview)),
        Route("/api/overview", guard(views.overview_json)),
        Route("/task", guard(views.find_task)),
        Route("/task/{uuid:path}", guard(views.task)),
        Route("/failures", guard(views.failures)),
        Route("/dead", guard(views.dead)),
        Route("/dead/requeue", guard(views.dead_action), methods=["POST"]),
        Route("/dead/delete", guard(views.dead_action), methods=["POST"]),
        Route("/periodic", guard(views.periodic)),
        Route("/purge", guard(views.purge), methods=["POST"]),
        Route("/revoke", guard(views.revoke), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static")),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.reader = views.reader
    return app


class _Views:
    def __init__(self, server: Server, refresh_seconds: float) -> None:
        self.server = server
        self.reader = Reader(server)
        self.refresh_ms = int(refresh_seconds * 1000)
        self.csrf = new_csrf_token()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["tojson_text"] = _json_text
        self.templates = Jinja2Templates(env=env)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        done = DONE.get(request.query_params.get("done", ""))
        count = request.query_params.get("n", "")
        context.update(
            root=root,
            csrf=self.csrf,
            version=__version__,
            refresh_ms=self.refresh_ms,
            broker=self.server.broker.describe(),
            backend=self.server.backend.describe(),
            notice=done.format(n=int(count)) if done and count.isdigit() else "",
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    # -- pages -------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        snapshot = await self.reader.overview()
        caps = self.server.broker.capabilities
        return self.render(
            request,
            "overview.html",
            overview=snapshot,
            workers=[worker_row(w) for w in snapshot.workers],
            caps=caps,
            data=snapshot.as_json(),
        )

    async def overview_json(self, request: Request) -> Response:
        snapshot = await self.reader.overview()
        return JSONResponse(snapshot.as_json(), headers={"cache-control": "no-store"})

    async def find_task(self, request: Request) -> Response:
        uuid = request.query_params.get("uuid", "").strip()
        root = request.scope.get("root_path", "").rstrip("/")
        if not uuid:
            return RedirectResponse(f"{root}/", status_code=303)
        if not TASK_UUID.match(uuid):
            return self.render(request, "task.html", status=400, view=None, uuid=uuid, bad=True)
        return RedirectResponse(f"{root}/task/{uuid}", status_code=303)

    async def task(self, request: Request) -> Response:
        uuid = request.path_params["uuid"]
        if not TASK_UUID.match(uuid):
            return self.render(request, "task.html", status=400, view=None, uuid=uuid, bad=True)
        view = await self.reader.task(uuid)
        state = view.state
        found = state is not None or view.group is not None
        return self.render(
            request,
            "task.html",
            status=200 if found else 404,
            view=view,
            uuid=uuid,
            bad=False,
            results=_results(state.results if state else None),
            progress=getattr(state, "progress", None),
            can_revoke=_can_revoke(view),
        )

    async def failures(self, request: Request) -> Response:
        snapshot = await self.reader.overview()
        rows = self.reader.recent_failures(snapshot.workers)
        return self.render(request, "failures.html", rows=rows, has_registry=snapshot.has_registry)

    async def dead(self, request: Request) -> Response:
        queue = self._queue(request.query_params.get("queue"))
        letters = await self.reader.dead_letters(queue)
        rows = [{"id": dead_letter_id(x), "letter": x, "sig": signature_of(x)} for x in letters]
        snapshot = await self.reader.overview()
        return self.render(
            request,
            "dead.html",
            queue=queue,
            queues=[q.name for q in snapshot.queues],
            rows=rows,
            caps=self.server.broker.capabilities,
        )

    async def periodic(self, request: Request) -> Response:
        return self.render(request, "periodic.html", rows=self.reader.periodic())

    # -- actions -----------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str]:
        form = await request.form()
        if not csrf_ok(self.csrf, form.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def dead_action(self, request: Request) -> Response:
        form = await self._form(request)
        broker = self.server.broker
        if not broker.capabilities.edit_dead_letters:
            raise HTTPException(400, f"{broker.describe()} cannot requeue or delete dead letters")
        queue = self._queue(form.get("queue"))
        requeue = request.url.path.endswith("/requeue")
        letters = None
        if form.get("all") != "1":
            letter = await self.reader.find_dead_letter(queue, form.get("id", ""))
            letters = [letter] if letter is not None else []
        if requeue:
            count = await broker.requeue_dead_letters(queue, letters)
        else:
            count = await broker.delete_dead_letters(queue, letters)
        what = "requeued" if requeue else "deleted"
        logger.info("dashboard: %s %d dead letters of %s", what, count, queue)
        return self._back(request, "/dead", queue=queue, done=what, n=count)

    async def purge(self, request: Request) -> Response:
        form = await self._form(request)
        queue = self._queue(form.get("queue"))
        if form.get("confirm", "").strip() != queue:
            raise HTTPException(400, f"to purge, type the queue's name ({queue}) to confirm")
        await self.reader.connect()
        count = await self.server.broker.purge(queue)
        logger.info("dashboard: purged %d tasks from %s", count, queue)
        return self._back(request, "/", done="purged", n=count)

    async def revoke(self, request: Request) -> Response:
        form = await self._form(request)
        uuid = form.get("uuid", "").strip()
        if not TASK_UUID.match(uuid):
            raise HTTPException(400, "not a task UUID")
        terminate = form.get("terminate") == "1"
        await self.reader.connect()
        revoked = await self.server.revoke(uuid, terminate=terminate)
        done = ("terminated" if terminate else "revoked") if revoked else "finished"
        logger.info("dashboard: revoke %s (terminate=%s): %s", uuid, terminate, done)
        return self._back(request, f"/task/{uuid}", done=done, n=int(revoked))

    def _back(self, request: Request, path: str, **query: Any) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}{path}?{urlencode(query)}", status_code=303)

    def _queue(self, name: str | None) -> str:
        queue = (name or "").strip() or self.server.config.default_queue
        if not QUEUE_NAME.match(queue):
            raise HTTPException(400, "not a queue name")
        return queue

    # -- errors ------------------------------------------------------------------------------

    def guard(self, view: Endpoint) -> Endpoint:
        """``view``, with a failure shown as an error page (passwords masked) instead of a 500."""

        async def guarded(request: Request) -> Response:
            try:
                return await view(request)
            except HTTPException as exc:
                status, text = exc.status_code, str(exc.detail)
            except Exception as exc:
                status, text = 503, mask_secrets(error_text(exc, with_type=True))
                logger.warning("dashboard: %s %s failed: %s", request.method, request.url.path, text)
            return self.render(request, "error.html", status=status, message=text)

        return guarded


def _can_revoke(view: TaskView) -> bool:
    """Whether the task page offers revoke: a task not finished (a stored state not final, or
    no state but a message the broker holds); not a group."""
    if view.state is not None:
        return not view.state.is_completed()
    return view.group is None and view.message is not None


def _results(results: Any) -> list[dict[str, Any]]:
    """Each result as JSON text (the template escapes it)."""
    return [{"type": r.type, "text": _json_text(r.value)} for r in results or ()]


def _json_text(value: Any) -> str:
    """A value as JSON text, to be escaped like any other text (unlike Jinja's ``tojson``)."""
    return json.dumps(value, ensure_ascii=False, default=str)
