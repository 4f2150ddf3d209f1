"""What the numbers were measured on: CPU, cores, load, server versions."""

from __future__ import annotations

import os
import platform
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), 2):
            return True
    except OSError:
        return False


def redis_version(url: str) -> str:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            return str(client.info("server").get("redis_version", "unknown"))
        finally:
            client.close()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def rabbitmq_version(url: str) -> str:
    """The ``version`` the server announces in AMQP's Connection.Start (no client library)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 3) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            data = b""
            while len(data) < 2048 and b"\xce" not in data[7:]:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        found = re.search(rb"version(?:S|s)....([0-9][0-9A-Za-z.+-]*)", data, re.S)
        return found.group(1).decode() if found else "unknown"
    except OSError as exc:
        return f"unreachable ({exc.strerror or exc})"


def describe(redis_url: str, amqp_url: str) -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version(redis_url) if reachable(redis_url, 6379) else "unreachable",
        "rabbitmq": rabbitmq_version(amqp_url),
    }
