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
  hosts being the sentinels.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from .config import Config, ConfigError
from .urls import mask_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    RedisClient = Redis | RedisCluster
else:
    RedisClient = Any

__all__ = ["RedisClient", "RedisSettings", "create_redis", "is_cluster", "parse_redis_url"]


@dataclass(slots=True)
class RedisSettings:
    """What a Redis URL says, parsed."""

    hosts: list[tuple[str, int]] = field(default_factory=list)
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_path: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisSettings:
    """Parse any of the URL forms above; raises ConfigError with the URL masked."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "redis+socket"):
        raise ConfigError(f"not a Redis URL: {mask_url(url)!r}")
    rest, _, query = rest.partition("?")
    settings = RedisSettings(tls=scheme == "rediss")
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
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]") or "127.0.0.1"
        try:
            settings.hosts.append((host, int(port) if port else 6379))
        except ValueError:
            raise ConfigError(f"bad port {port!r} in Redis URL {mask_url(url)!r}") from None
    if not settings.hosts:
        settings.hosts.append(("127.0.0.1", 6379))
    return settings


def _db(text: str, url: str) -> int:
    text = text.strip("/")
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"bad database number {text!r} in Redis URL {mask_url(url)!r}") from None


def is_cluster(url: str, config: Config) -> bool:
    """True when ``url`` names a Redis Cluster (several hosts, or ``cluster_enabled``)."""
    if config.redis.master_name:
        return False
    settings = parse_redis_url(url)
    return settings.socket_path is None and (
        config.redis.cluster_enabled or len(settings.hosts) > 1
    )


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
    from redis.asyncio.cluster import ClusterNode, RedisCluster
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
        return Redis(unix_socket_path=settings.socket_path, db=settings.db,
                     max_connections=pool_size, **common)
    if rc.master_name:
        sentinel_kwargs = {"password": rc.sentinel_password} if rc.sentinel_password else {}
        sentinel = Sentinel(settings.hosts, sentinel_kwargs=sentinel_kwargs, **tls)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(rc.master_name, db=settings.db,
                                            max_connections=pool_size, **common, **tls)
        return master
    if rc.cluster_enabled or len(settings.hosts) > 1:
        if settings.db:
            raise ConfigError("a Redis Cluster has only database 0")
        common.pop("health_check_interval")
        nodes = [ClusterNode(host, port) for host, port in settings.hosts]
        return RedisCluster(startup_nodes=nodes, max_connections=pool_size, **common, **tls)
    host, port = settings.hosts[0]
    return Redis(host=host, port=port, db=settings.db, max_connections=pool_size, **common, **tls)
