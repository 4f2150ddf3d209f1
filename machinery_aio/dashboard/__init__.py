"""The web dashboard (needs the ``dashboard`` extra): ``machinery-aio dashboard -A pkg.mod:server``,
or ``app.mount("/tasks", dashboard_app(server))`` in a FastAPI or Starlette app."""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from ..drivers import MissingExtraError

    raise MissingExtraError(
        f"the dashboard needs the dashboard extra: pip install 'machinery-aio[dashboard]' ({exc})"
    ) from exc

from .app import dashboard_app

__all__ = ["dashboard_app"]
