"""Pick a broker, result backend or lock by URL scheme, importing drivers lazily."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ..config import Config, ConfigError
from ..urls import mask_url, scheme_of

if TYPE_CHECKING:
    from .backend import ResultBackend
    from .broker import Broker
    from .lock import Lock

__all__ = ["MissingExtraError", "create_backend", "create_broker", "create_lock"]


class MissingExtraError(ImportError):
    """A URL needs a driver that is not installed; the message names the extra."""


class _Driver(NamedTuple):
    module: str
    cls: str
    package: str | None = None
    extra: str | None = None


_REDIS = ("redis", "rediss", "redis+socket", "redis+sentinel", "rediss+sentinel")

_BROKERS: dict[str, _Driver] = {
    "memory": _Driver("machinery_aio.drivers.memory.broker", "MemoryBroker"),
    "eager": _Driver("machinery_aio.drivers.memory.broker", "MemoryBroker"),
    **{s: _Driver("machinery_aio.drivers.redis.broker", "RedisBroker", "redis", "redis") for s in _REDIS},
    "amqp": _Driver("machinery_aio.drivers.amqp.broker", "AMQPBroker", "aio_pika", "amqp"),
    "amqps": _Driver("machinery_aio.drivers.amqp.broker", "AMQPBroker", "aio_pika", "amqp"),
    "sqs": _Driver("machinery_aio.brokers.sqs", "SQSBroker", "aiobotocore", "sqs"),
}
_BACKENDS: dict[str, _Driver] = {
    "memory": _Driver("machinery_aio.drivers.memory.backend", "MemoryBackend"),
    "eager": _Driver("machinery_aio.drivers.memory.backend", "MemoryBackend"),
    "null": _Driver("machinery_aio.drivers.null.backend", "NullBackend"),
    **{s: _Driver("machinery_aio.drivers.redis.backend", "RedisBackend", "redis", "redis") for s in _REDIS},
    "amqp": _Driver("machinery_aio.drivers.amqp.backend", "AMQPBackend", "aio_pika", "amqp"),
    "amqps": _Driver("machinery_aio.drivers.amqp.backend", "AMQPBackend", "aio_pika", "amqp"),
    "memcache": _Driver("machinery_aio.backends.memcache", "MemcacheBackend", "aiomcache", "memcache"),
    "mongodb": _Driver("machinery_aio.backends.mongo", "MongoBackend", "pymongo", "mongo"),
    "mongodb+srv": _Driver("machinery_aio.backends.mongo", "MongoBackend", "pymongo", "mongo"),
    "dynamodb": _Driver("machinery_aio.backends.dynamodb", "DynamoDBBackend", "aiobotocore", "dynamodb"),
}
_LOCKS: dict[str, _Driver] = {
    "memory": _Driver("machinery_aio.drivers.memory.lock", "MemoryLock"),
    "eager": _Driver("machinery_aio.drivers.memory.lock", "MemoryLock"),
    **{s: _Driver("machinery_aio.drivers.redis.lock", "RedisLock", "redis", "redis") for s in _REDIS},
}

T = TypeVar("T")


def _scheme(url: str, kind: str) -> str:
    scheme = scheme_of(url)
    if not scheme and url.strip().lower() in ("eager", "memory", "null"):
        return url.strip().lower()
    if scheme in ("http", "https"):
        host = url.split("://", 1)[1].split("/", 1)[0].lower()
        if "sqs" in host and kind == "broker":
            return "sqs"
        if "dynamodb" in host and kind == "result backend":
            return "dynamodb"
    return scheme


def _load(table: dict[str, _Driver], url: str, kind: str) -> Any:
    scheme = _scheme(url, kind)
    driver = table.get(scheme)
    if driver is None:
        known = ", ".join(sorted(f"{s}://" for s in table))
        raise ConfigError(
            f"unknown {kind} URL scheme {scheme or '(none)'!r} in {mask_url(url)!r}; known schemes: {known}"
        )
    if driver.package and importlib.util.find_spec(driver.package) is None:
        raise MissingExtraError(
            f"the {kind} URL {mask_url(url)!r} needs the {driver.package!r} package: "
            f"pip install 'machinery-aio[{driver.extra}]'"
        )
    try:
        module = importlib.import_module(driver.module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("machinery_aio"):
            raise ConfigError(f"{scheme}:// {kind} is not available in this version") from None
        raise MissingExtraError(
            f"the {kind} URL {mask_url(url)!r} needs {exc.name!r}: "
            f"pip install 'machinery-aio[{driver.extra}]'"
        ) from exc
    return getattr(module, driver.cls)


def create_broker(config: Config, url: str | None = None) -> Broker:
    """The broker for ``url`` (default: ``config.broker``)."""
    url = url or config.broker_urls()[0]
    cls = _load(_BROKERS, url, "broker")
    broker: Broker = cls(config, url)
    return broker


def create_backend(config: Config, url: str | None = None) -> ResultBackend:
    """The result backend for ``url`` (default: ``config.result_backend``)."""
    url = url or config.result_backend
    cls = _load(_BACKENDS, url, "result backend")
    backend: ResultBackend = cls(config, url)
    return backend


def lock_url(config: Config) -> str:
    """The lock URL: ``config.lock``, else a Redis backend or broker, else memory."""
    if config.lock:
        return config.lock
    for url in (config.result_backend, config.broker_urls()[0]):
        if scheme_of(url) in _REDIS:
            return url
    return "memory://"


def create_lock(config: Config, url: str | None = None) -> Lock:
    """The lock for ``url`` (default: :func:`lock_url`)."""
    url = url or lock_url(config)
    cls = _load(_LOCKS, url, "lock")
    lock: Lock = cls(config, url)
    return lock
