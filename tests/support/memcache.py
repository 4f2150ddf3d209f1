"""Test helpers for memcached: a raw client and clean-up of a test's keys."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable

import aiomcache

from machinery_aio.drivers.memcache.backend import chord_owner_key
from machinery_aio.drivers.memcache.servers import parse_servers
from tests.services import wait_open


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


async def remaining_ttl(key: str, host: str = "127.0.0.1", port: int = 11211) -> int:
    """Seconds ``key`` has left, by memcached's meta-get (``mg <key> t``); -1: no expiry."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"mg {key} t\r\n".encode())
        await writer.drain()
        line = (await reader.readuntil(b"\r\n")).decode().split()
    finally:
        writer.close()
    assert line[0] == "HD", line
    return int(next(flag for flag in line[1:] if flag.startswith("t"))[1:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateMemcached:
    """A memcached of the test's own on a free loopback port (restartable on that port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"memcache://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [binary, "-l", "127.0.0.1", "-p", str(self.port), *user],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_open("127.0.0.1", self.port, 10), "memcached did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
