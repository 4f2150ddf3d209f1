"""Drivers: brokers, result backends and locks, chosen by URL and imported lazily.

Each technology lives in one folder (``drivers/redis/``, ``drivers/amqp/`` ...)
with a ``broker.py``, ``backend.py`` and/or ``lock.py`` implementing the
interfaces in :mod:`.broker`, :mod:`.backend` and :mod:`.lock`. A new driver
is one more :class:`Technology` in :data:`TECHNOLOGIES`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..config import Config, ConfigError
from ..urls import host_of, mask_url, scheme_of

if TYPE_CHECKING:
    from .backend import ResultBackend
    from .broker import Broker
    from .lock import Lock

__all__ = [
    "TECHNOLOGIES",
    "MissingExtraError",
    "Technology",
    "create_backend",
    "create_broker",
    "create_lock",
    "lock_url",
]

Role = Literal["broker", "backend", "lock"]
_HTTP = ("https", "http")
_ROLE_NAMES: dict[Role, str] = {"broker": "broker", "backend": "result backend", "lock": "lock"}


class MissingExtraError(ImportError):
    """A URL needs a driver that is not installed; the message names the extra."""


@dataclass(frozen=True, slots=True)
class Technology:
    """One folder of drivers: the URL schemes it serves and the classes it has per role."""

    name: str
    """The folder under ``machinery_aio/drivers/``."""
    schemes: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    """For ``https://`` URLs, which several services share: a label the URL's host must have
    (``sqs`` in ``sqs.us-east-1.amazonaws.com``). Empty means any host."""
    extra: str | None = None
    """The ``pip install 'machinery-aio[extra]'`` that brings its client library."""
    package: str | None = None
    """The client library's import name, checked before the driver is imported."""
    broker: str | None = None
    backend: str | None = None
    lock: str | None = None

    def cls_name(self, role: Role) -> str | None:
        name: str | None = getattr(self, role)
        return name


TECHNOLOGIES: tuple[Technology, ...] = (
    Technology("memory", ("memory",), broker="MemoryBroker", backend="MemoryBackend", lock="MemoryLock"),
    Technology("null", ("null",), backend="NullBackend"),
    Technology(
        "redis",
        ("redis", "rediss", "redis+socket", "redis+sentinel", "rediss+sentinel"),
        extra="redis",
        package="redis",
        broker="RedisBroker",
        backend="RedisBackend",
        lock="RedisLock",
    ),
    Technology(
        "amqp",
        ("amqp", "amqps"),
        extra="amqp",
        package="aio_pika",
        broker="AMQPBroker",
        backend="AMQPBackend",
    ),
    Technology("gcp", ("gcppubsub",), extra="gcp", package="google.cloud.pubsub", broker="GCPPubSubBroker"),
    Technology("memcache", ("memcache",), extra="memcache", package="aiomcache", backend="MemcacheBackend"),
    Technology("mongo", ("mongodb", "mongodb+srv"), extra="mongo", package="pymongo", backend="MongoBackend"),
    Technology("aws", _HTTP, hosts=("sqs",), extra="aws", package="aiobotocore", broker="SQSBroker"),
    Technology(
        "aws", _HTTP, hosts=("dynamodb",), extra="aws", package="aiobotocore", backend="DynamoDBBackend"
    ),
    Technology("eager", ("eager",), broker="EagerBroker", backend="EagerBackend"),
)


def technology_of(url: str) -> Technology | None:
    """The technology whose scheme ``url`` has (``memory``, ``null``, ``eager`` may be bare words);
    for ``https://`` URLs, also the host (``sqs.<region>.amazonaws.com``)."""
    scheme = scheme_of(url) or url.strip().lower()
    labels = set(host_of(url).split(".")) if scheme in _HTTP else set()
    for tech in TECHNOLOGIES:
        if scheme in tech.schemes and (not tech.hosts or labels.intersection(tech.hosts)):
            return tech
    return None


def schemes(role: Role) -> list[str]:
    """Every URL scheme that has a driver for ``role``."""
    return [s for t in TECHNOLOGIES if t.cls_name(role) for s in t.schemes]


def _load(url: str, role: Role) -> Any:
    kind = _ROLE_NAMES[role]
    tech = technology_of(url)
    cls_name = tech.cls_name(role) if tech is not None else None
    if tech is None or cls_name is None:
        if scheme_of(url) in _HTTP:
            raise ConfigError(_http_error(url, role))
        word = url.strip()
        scheme = scheme_of(url) or (word if word.isalnum() else "(none)")
        known = ", ".join(f"{s}://" for s in schemes(role))
        raise ConfigError(
            f"unknown {kind} URL scheme {scheme!r} in {mask_url(url)!r}; known schemes: {known}"
        )
    if tech.package and importlib.util.find_spec(tech.package) is None:
        raise MissingExtraError(
            f"the {kind} URL {mask_url(url)!r} needs the {tech.package!r} package: "
            f"pip install 'machinery-aio[{tech.extra}]'"
        )
    try:
        module = importlib.import_module(f"machinery_aio.drivers.{tech.name}.{role}")
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"the {kind} URL {mask_url(url)!r} needs {exc.name!r}: pip install 'machinery-aio[{tech.extra}]'"
        ) from exc
    return getattr(module, cls_name)


def _http_error(url: str, role: Role) -> str:
    """An https URL names a service by its host: say which hosts serve ``role``."""
    kind = _ROLE_NAMES[role]
    serving = [t for t in TECHNOLOGIES if t.hosts and t.cls_name(role)]
    known = ", ".join(f"https://{h}.<region>.amazonaws.com" for t in serving for h in t.hosts)
    return (
        f"unknown {kind} URL scheme 'https' for host {host_of(url)!r} in {mask_url(url)!r}: "
        f"an https {kind} URL must name its service by host ({known or 'none serves this role'})"
    )


def create_broker(config: Config, url: str | None = None) -> Broker:
    """The broker for ``url`` (default: the config's first broker URL)."""
    url = url or config.broker_urls()[0]
    broker: Broker = _load(url, "broker")(config, url)
    return broker


def create_backend(config: Config, url: str | None = None) -> ResultBackend:
    """The result backend for ``url`` (default: ``config.result_backend``)."""
    url = url or config.result_backend
    backend: ResultBackend = _load(url, "backend")(config, url)
    return backend


def lock_url(config: Config) -> str:
    """The lock URL: ``config.lock``, else the result backend's or the broker's URL when its
    technology has a lock that works across processes, else ``memory://``."""
    if config.lock:
        return config.lock
    for url in (config.result_backend, config.broker_urls()[0]):
        tech = technology_of(url)
        if tech is not None and tech.lock and not _load(url, "lock").capabilities.in_process:
            return url
    return "memory://"


def create_lock(config: Config, url: str | None = None) -> Lock:
    """The lock for ``url`` (default: :func:`lock_url`)."""
    url = url or lock_url(config)
    lock: Lock = _load(url, "lock")(config, url)
    return lock
