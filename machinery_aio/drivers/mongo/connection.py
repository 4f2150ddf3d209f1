"""The MongoDB client (pymongo's own asyncio client) and the database a URL means."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure

from ...config import ConfigError
from ...log import get_logger
from ...urls import mask_url
from ..retrying import retry_while_down

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["GO_DATABASE", "create_client", "database_name", "is_connection_error", "run"]

logger = get_logger("machinery_aio.drivers.mongo")

T = TypeVar("T")

GO_DATABASE = "machinery"
"""Go Machinery's database when its config names none."""
SERVER_SELECTION_MS = 5000
"""How long one operation waits for a reachable server (unless the URL says otherwise)
before :func:`run` retries it."""


def database_name(url: str, config: Config) -> str:
    """``config.mongodb.database`` if set (Go's ``MongoDB.Database``), else the database the
    URL's path names, else Go's ``machinery``."""
    if config.mongodb.database:
        return config.mongodb.database
    path = urlsplit(url).path
    name = unquote(path.lstrip("/"))
    if "/" in name or any(c in name for c in ' ."$\\'):
        raise ConfigError(f"{mask_url(url)!r}: {name!r} is not a MongoDB database name")
    return name or GO_DATABASE


def create_client(url: str) -> AsyncMongoClient[dict[str, Any]]:
    """A client for ``url``; every option in the URL (``tls=true``, ``tlsCAFile=...``,
    ``replicaSet=...``, ``authSource=...``; ``mongodb+srv://`` records) goes to pymongo as is."""
    query = urlsplit(url).query.lower()
    options: dict[str, Any] = {"tz_aware": True, "appname": "machinery-aio"}
    if "serverselectiontimeoutms" not in query:
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_MS
    try:
        return AsyncMongoClient(url, **options)
    except Exception as exc:  # pymongo's InvalidURI, ConfigurationError, ValueError
        raise ConfigError(f"bad MongoDB URL {mask_url(url)!r}: {exc}") from None


def is_connection_error(exc: Exception) -> bool:
    """A lost, refused or not yet selected server (pymongo's ``ConnectionFailure`` family)."""
    return isinstance(exc, ConnectionFailure)


async def run(operation: Callable[[], Awaitable[T]], what: str) -> T:
    """``operation`` retried while MongoDB is unreachable (see :func:`retry_while_down`)."""
    return await retry_while_down(operation, is_connection_error, f"MongoDB: {what}", logger)
