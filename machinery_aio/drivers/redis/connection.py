"""Redis connections from Go Machinery's URLs (needs the ``redis`` extra).

Accepted, as Go Machinery accepts them:

* ``redis://[[user:]password@]host[:port][/db]``; ``redis://password@host``
  (no colon) means a password, as in Go;
* ``rediss://...`` for TLS (CA, certificate and key from ``Config.tls``, or
  ``?ssl_ca_certs=&ssl_certfile=&ssl_keyfile=&ssl_cert_reqs=none`` in the URL);
* ``redis+socket://[password@]/path/to/file.sock[:/db]``;
* ``redis://host1:port1,host2:port2`` or ``redis.cluster_enabled`` for a Redis
  Cluster;
* ``redis.master_name`` (with ``redis.sentinel_password``) for Sentinel, the
  hosts being the sentinels; or ``redis+sentinel://host:26379,.../db?master_name=``
  (``rediss+sentinel://`` with TLS).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote

from ...config import Config, ConfigError
from ...urls import mask_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    RedisClient = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = [
    "RedisClient",
    "RedisSettings",
    "cancel_and_wait",
    "create_redis",
    "is_cluster",
    "parse_redis_url",
]

_SCHEMES = ("redis", "rediss", "redis+socket", "redis+sentinel", "rediss+sentinel")


@dataclass(slots=True)
class RedisSettings:
    """What a Redis URL says, parsed."""

    hosts: list[tuple[str, int]] = field(default_factory=list)
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_path: str | None = None
    sentinel: bool = False
    options: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisSettings:
    """Parse any of the URL forms above; raises ConfigError with the URL masked."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"not a Redis URL: {mask_url(url)!r}")
    rest, _, query = rest.partition("?")
    settings = RedisSettings(tls=scheme.startswith("rediss"), sentinel=scheme.endswith("+sentinel"))
    settings.options = {k: v[-1] for k, v in parse_qs(query).items()}
    userinfo, at, location = rest.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            settings.username = unquote(user) or None
            settings.password = unquote(password) or None
        else:
            settings.password = unquote(user) or None
    else:
        location = rest
    if scheme == "redis+socket":
        path, _, db = location.partition(":/")
        if not path:
            raise ConfigError(f"redis+socket URL needs a socket path: {mask_url(url)!r}")
        settings.socket_path = path
        settings.db = _db(db, url)
        return settings
    hosts, _, db = location.partition("/")
    settings.db = _db(db, url)
    default_port = 26379 if settings.sentinel else 6379
    for item in filter(None, (h.strip() for h in hosts.split(","))):
        settings.hosts.append(_host_port(item, default_port, url))
    if not settings.hosts:
        settings.hosts.append(("127.0.0.1", default_port))
    return settings


def _host_port(item: str, default_port: int, url: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ConfigError(f"bad host {item!r} in Redis URL {mask_url(url)!r}")
        port = port[1:]
    elif item.count(":") > 1:
        host, port = item, ""  # a bare IPv6 address
    else:
        host, _, port = item.partition(":")
    if not port:
        return host or "127.0.0.1", default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad port {port!r} in Redis URL {mask_url(url)!r}")
    return host or "127.0.0.1", int(port)


def _db(text: str, url: str) -> int:
    text = text.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise ConfigError(f"bad database number {text!r} in Redis URL {mask_url(url)!r}")
    return int(text)


def is_cluster(url: str, config: Config) -> bool:
    """True when ``url`` names a Redis Cluster (several hosts, or ``cluster_enabled``)."""
    settings = parse_redis_url(url)
    if _master_name(settings, config):
        return False
    return settings.socket_path is None and (config.redis.cluster_enabled or len(settings.hosts) > 1)


def _master_name(settings: RedisSettings, config: Config) -> str:
    """The Sentinel master name: ``redis.master_name``, or ``?master_name=`` in a
    ``redis+sentinel://`` URL; empty when not using Sentinel."""
    name = settings.options.get("master_name", "") if settings.sentinel else ""
    name = name or config.redis.master_name
    if settings.sentinel and not name:
        raise ConfigError("a redis+sentinel:// URL needs ?master_name= or redis.master_name")
    return name


def _ssl_options(settings: RedisSettings, config: Config) -> dict[str, Any]:
    if not settings.tls:
        return {}
    opts = settings.options
    tls = config.tls
    reqs = opts.get("ssl_cert_reqs", "none" if tls.insecure_skip_verify else "required")
    return {
        "ssl": True,
        "ssl_ca_certs": opts.get("ssl_ca_certs") or tls.ca_file or None,
        "ssl_certfile": opts.get("ssl_certfile") or tls.cert_file or None,
        "ssl_keyfile": opts.get("ssl_keyfile") or tls.key_file or None,
        "ssl_cert_reqs": {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
            reqs.lower(), ssl.CERT_REQUIRED
        ),
        "ssl_check_hostname": reqs.lower() == "required" and not tls.insecure_skip_verify,
    }


def create_redis(url: str, config: Config, *, max_connections: int | None = None) -> RedisClient:
    """A ``redis.asyncio`` client (or cluster client) for ``url``, with bytes responses."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.sentinel import Sentinel

    settings = parse_redis_url(url)
    rc = config.redis
    pool_size = max_connections or rc.max_active or 64
    common: dict[str, Any] = {
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": rc.read_timeout or None,
        "socket_connect_timeout": rc.connect_timeout or None,
        "client_name": rc.client_name or None,
        "decode_responses": False,
        "health_check_interval": 30,
    }
    tls = _ssl_options(settings, config)
    if settings.socket_path is not None:
        return _pooled(
            Redis(unix_socket_path=settings.socket_path, db=settings.db, max_connections=pool_size, **common),
            config,
        )
    master_name = _master_name(settings, config)
    if master_name:
        sentinel_kwargs: dict[str, Any] = {
            "password": rc.sentinel_password or None,
            "socket_timeout": common["socket_timeout"],
            "socket_connect_timeout": common["socket_connect_timeout"],
            **tls,
        }
        sentinel = Sentinel(settings.hosts, sentinel_kwargs=sentinel_kwargs, **tls)  # type: ignore[no-untyped-call]
        master: Any = sentinel.master_for(
            master_name,
            redis_class=_sentinel_master_class(),
            db=settings.db,
            max_connections=pool_size,
            **common,
            **tls,
        )
        master.sentinel_clients = list(sentinel.sentinels)
        client: Redis = master
        return client
    if rc.cluster_enabled or len(settings.hosts) > 1:
        if settings.db:
            raise ConfigError("a Redis Cluster has only database 0")
        common.pop("health_check_interval")
        nodes = [ClusterNode(host, port) for host, port in settings.hosts]
        cluster = _cluster_class()(startup_nodes=nodes, max_connections=pool_size, **common, **tls)
        cluster.wait_for_connection = rc.wait  # type: ignore[attr-defined]
        cluster.connection_wait_timeout = rc.connect_timeout or None  # type: ignore[attr-defined]
        return cluster
    host, port = settings.hosts[0]
    return _pooled(
        Redis(host=host, port=port, db=settings.db, max_connections=pool_size, **common, **tls), config
    )


@functools.cache
def _sentinel_master_class() -> type[Redis]:
    from redis.asyncio import Redis

    class SentinelMaster(Redis):
        """The master found through Sentinel; closing it closes the sentinel connections too."""

        sentinel_clients: list[Redis] = []

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await super().aclose(close_connection_pool)
            for client in self.sentinel_clients:
                await client.aclose()

    return SentinelMaster


@functools.cache
def _cluster_class() -> type[RedisCluster]:
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import MaxConnectionsError

    class WaitingRedisCluster(RedisCluster):
        """Two fixes to redis-py's cluster client for use under concurrency:

        * it can break connections when several commands race through its first
          initialisation (seen with redis-py 8.1: "'NoneType' object has no attribute
          'writelines'"), so every command waits for it to finish first;
        * it fails at once when a node's pool is exhausted; with ``wait_for_connection``
          (Go's ``Wait``) a command waits for a free connection instead, up to
          ``connection_wait_timeout`` s (nothing was sent when the error is raised).
        """

        wait_for_connection = True
        connection_wait_timeout: float | None = None

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            await self.initialize()
            deadline = None
            while True:
                try:
                    return await super().execute_command(*args, **kwargs)
                except MaxConnectionsError:
                    if not self.wait_for_connection:
                        raise
                    now = time.monotonic()
                    if deadline is None and self.connection_wait_timeout is not None:
                        deadline = now + self.connection_wait_timeout
                    if deadline is not None and now >= deadline:
                        raise
                    await asyncio.sleep(0.002)

    return WaitingRedisCluster


def _pooled(client: Redis, config: Config) -> Redis:
    """The client's pool, rebuilt: with ``redis.wait`` (Go's ``Wait``, the default) a caller
    that finds every pooled connection busy waits for one (up to the connect timeout)
    instead of failing; commands are packed by hiredis when it is installed."""
    from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis

    pool = client.connection_pool
    kwargs = {
        "max_connections": pool.max_connections,
        "connection_class": _hiredis_packing(cast(Hashable, pool.connection_class)),
        **pool.connection_kwargs,
    }
    rebuilt: ConnectionPool
    if config.redis.wait:
        rebuilt = BlockingConnectionPool(timeout=config.redis.connect_timeout or None, **kwargs)
    else:
        rebuilt = ConnectionPool(**kwargs)
    return Redis.from_pool(rebuilt)


@functools.cache
def _hiredis_packing(connection_class: Any) -> type[Any]:
    """``connection_class`` packing commands with hiredis (the same bytes, in C; redis-py's
    asyncio connections pack in Python). Unchanged when hiredis is not installed."""
    try:
        import hiredis
    except ImportError:
        unchanged: type[Any] = connection_class
        return unchanged

    class HiredisPacking(connection_class):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            first = args[0]
            if isinstance(first, (str, bytes)) and len(first.split()) > 1:
                args = (*first.split(), *args[1:])  # "CLIENT SETNAME", as redis-py sends it
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # let redis-py report unsupported values its own way
                packed: list[bytes] = super().pack_command(*args)
                return packed

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"Hiredis{connection_class.__name__}"
    return HiredisPacking


async def cancel_and_wait(task: asyncio.Task[Any], retry_every: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if needed.

    On Python 3.11, ``asyncio.wait_for`` (which redis-py uses to send every command
    when a socket timeout is set) drops a cancellation that arrives just as the
    command completes, so one ``cancel()`` may not stop a task that talks to Redis.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=retry_every)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
