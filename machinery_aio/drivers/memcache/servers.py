"""Memcache servers from a ``memcache://`` URL, and which one holds a key (as Go picks it)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import aiomcache
from aiomcache.pool import Connection

from ...config import ConfigError
from ...log import get_logger
from ...urls import mask_url
from ..retrying import retry_while_down

__all__ = ["MAX_KEY_BYTES", "Servers", "check_key", "is_connection_error", "parse_servers"]

logger = get_logger("machinery_aio.drivers.memcache")

T = TypeVar("T")

DEFAULT_PORT = 11211
MAX_KEY_BYTES = 250
POOL_SIZE = 32
"""Connections per server and backend instance."""
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    EOFError,
)


def is_connection_error(exc: Exception) -> bool:
    """A lost or refused connection (aiomcache reports EOF during a read as ``get failed: b''``)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    return isinstance(exc, aiomcache.ClientException) and str(exc).endswith(": b''")


"""What a lost or refused connection raises through aiomcache."""


def parse_servers(url: str) -> list[tuple[str, int]]:
    """``memcache://h1:p1,h2:p2`` as (host, port) pairs, in order (the order picks servers)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "memcache":
        raise ConfigError(f"{mask_url(url)!r} is not a memcache:// URL")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in rest:
        raise ConfigError(
            f"{mask_url(url)!r}: memcached's text protocol has no authentication; remove the user part"
        )
    servers: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        try:
            parsed = urlsplit(f"//{part}")
            host, port = parsed.hostname, parsed.port or DEFAULT_PORT
        except ValueError as exc:
            raise ConfigError(f"{mask_url(url)!r}: bad server {part!r}: {exc}") from None
        if not host:
            raise ConfigError(f"{mask_url(url)!r}: bad server {part!r}")
        servers.append((host, port))
    if not servers:
        raise ConfigError(f"{mask_url(url)!r} names no server (memcache://host:11211[,host:port...])")
    return servers


def check_key(key: str) -> bytes:
    """``key`` as memcached accepts it: at most 250 bytes, no spaces or control characters."""
    raw = key.encode()
    if not raw or len(raw) > MAX_KEY_BYTES or any(b <= 0x20 or b == 0x7F for b in raw):
        raise ValueError(
            f"{key!r} cannot be a memcached key (1 to {MAX_KEY_BYTES} bytes, no spaces or control characters)"
        )
    return raw


class _Client(aiomcache.Client):
    """aiomcache's client, except that a connection closed while a storage command waits
    for its reply raises instead of spinning (aiomcache 0.8 loops on ``readline()`` at EOF)."""

    async def _execute_simple_command(self, conn: Connection, raw_command: bytes) -> bytes:
        conn.writer.write(raw_command)
        await conn.writer.drain()
        line = await conn.reader.readuntil(b"\r\n")
        return line[:-2]


class Servers:
    """One aiomcache client per server; a key lives on ``servers[crc32(key) % n]``, as Go's
    gomemcache picks, so Go and Python find each other's records with several servers."""

    def __init__(self, url: str) -> None:
        self.addresses = parse_servers(url)
        self._clients: list[aiomcache.Client] | None = None

    @property
    def clients(self) -> list[aiomcache.Client]:
        if self._clients is None:
            self._clients = [_Client(h, p, pool_size=POOL_SIZE) for h, p in self.addresses]
        return self._clients

    def client_for(self, key: bytes) -> aiomcache.Client:
        clients = self.clients
        if len(clients) == 1:
            return clients[0]
        return clients[zlib.crc32(key) % len(clients)]

    def by_client(self, keys: Sequence[bytes]) -> dict[int, list[bytes]]:
        """Indexes into :attr:`clients` with the keys each one holds."""
        grouped: dict[int, list[bytes]] = {}
        n = len(self.clients)
        for key in keys:
            grouped.setdefault(0 if n == 1 else zlib.crc32(key) % n, []).append(key)
        return grouped

    async def run(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """``operation`` retried while the server is unreachable (see :func:`retry_while_down`)."""
        return await retry_while_down(operation, is_connection_error, f"memcached: {what}", logger)

    async def close(self) -> None:
        clients, self._clients = self._clients, None
        for client in clients or ():
            await client.close()
