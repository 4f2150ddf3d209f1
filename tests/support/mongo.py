"""Test helpers for MongoDB: a raw client and clean-up of a test's documents."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from machinery_aio.drivers.mongo.backend import GROUPS, TASKS
from tests.services import wait_open
from tests.support.memcache import free_port


def raw_client(url: str) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(url, tz_aware=True)


async def delete_documents(url: str, unique: str, database: str | None = None) -> None:
    """Delete every task and group document whose UUID has ``unique`` in it."""
    client = raw_client(url)
    try:
        db = client[database] if database else client.get_default_database()
        for name in (TASKS, GROUPS):
            await db[name].delete_many({"_id": {"$regex": re.escape(unique)}})
    finally:
        await client.close()


class PrivateMongo:
    """An nx-27017 of the test's own on a free loopback port, its data in a file under
    ``directory`` so a restart keeps it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/machinery_aio_tests"

    def start(self) -> None:
        binary = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
        self.proc = subprocess.Popen(
            [
                binary,
                "--db",
                str(self.dir / "nx.db"),
                "-p",
                str(self.port),
                "--log-file",
                str(self.dir / "nx.log"),
                "--pid-file",
                str(self.dir / "nx.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_open("127.0.0.1", self.port, 20), "nx-27017 did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
