"""Test helpers for memcached: a raw client and clean-up of a test's keys."""

from __future__ import annotations

from collections.abc import Iterable

import aiomcache

from machinery_aio.drivers.memcache.backend import chord_owner_key
from machinery_aio.drivers.memcache.servers import parse_servers


def raw_client(url: str = "memcache://127.0.0.1:11211") -> aiomcache.Client:
    host, port = parse_servers(url)[0]
    return aiomcache.Client(host, port)


async def delete_keys(url: str, names: Iterable[str]) -> None:
    """Delete the records (and chord owner keys) of the UUIDs a test used."""
    client = raw_client(url)
    try:
        for name in names:
            for key in (name, chord_owner_key(name)):
                await client.delete(key.encode())
    finally:
        await client.close()
