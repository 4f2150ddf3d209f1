"""Shared fixtures. Tests talk to real servers; under CI=true a missing server fails the test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from machinery_aio import Config, Server
from tests.services import is_open
from tests.support.processes import cli_process  # noqa: F401 - a fixture for CLI subprocess tests

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_server(host: str, port: int, what: str) -> None:
    """Skip (or, under CI, fail) when a server the test needs is not reachable."""
    if is_open(host, port):
        return
    message = f"{what} is not reachable on {host}:{port}; run scripts/test to start it"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def golden(name: str) -> bytes:
    """A golden wire vector from tests/data/golden (compact form)."""
    return (GOLDEN / f"{name}.compact.json").read_bytes()


@pytest.fixture
def unique() -> str:
    """A short unique name for queues and keys, so tests never share state."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def memory_config(unique: str) -> Config:
    return Config(
        broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=f"{unique}_tasks"
    )


@pytest.fixture
async def memory_server(memory_config: Config) -> AsyncIterator[Server]:
    server = Server(memory_config)
    yield server
    await server.close()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[[Config], Server]]:
    """Build servers that are closed after the test."""
    made: list[Server] = []

    def factory(config: Config) -> Server:
        server = Server(config)
        made.append(server)
        return server

    yield factory
    for server in made:
        await server.close()
