"""The pytest plugin (entry point ``pytest11``): fixtures for testing your own tasks.

- ``machinery_app``: your Server, from the ini option ``machinery_app = "pkg.mod:server"``;
  override the fixture to build it yourself.
- ``machinery_server``: that Server, pointed for the test at a ``memory://`` store of its
  own (``--machinery-broker URL`` for a real broker), its own drivers back afterwards.
- ``machinery_worker``: an embedded worker of it, running during the test.
- ``machinery_sent``: what the test sent (:class:`~machinery_aio.testing.SentTasks`).

The async fixtures are pytest-asyncio fixtures, so they work in its strict and auto modes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import Server
    from .testing import SentTasks
    from .worker import Worker

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures below say what to install
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("machinery-aio")
    group.addoption(
        "--machinery-broker",
        metavar="URL",
        default=None,
        help="broker for the machinery_server fixture (default: a memory:// store per test)",
    )
    group.addoption(
        "--machinery-backend",
        metavar="URL",
        default=None,
        help="result backend for machinery_server (default: the broker's own, else memory://)",
    )
    parser.addini("machinery_app", "the Server the machinery_server fixture uses: 'pkg.module:server'")


@pytest.fixture
def machinery_app(request: pytest.FixtureRequest) -> Server:
    """Your Server, from the ini option ``machinery_app``."""
    from .config import ConfigError
    from .testing import load_app

    spec = str(request.config.getini("machinery_app") or "")
    if not spec:
        pytest.fail(
            "machinery_server needs your Server: set machinery_app = 'package.module:server' in "
            "pytest.ini or [tool.pytest.ini_options], or define a machinery_app fixture",
            pytrace=False,
        )
    try:
        return load_app(spec, search=str(request.config.rootpath))
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)


def _needs_pytest_asyncio() -> None:
    pytest.fail("machinery_server and machinery_worker need pytest-asyncio: pip install pytest-asyncio")


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def machinery_server(
        request: pytest.FixtureRequest, machinery_app: Server
    ) -> AsyncIterator[Server]:
        """Your Server on a ``memory://`` store of the test's own (or ``--machinery-broker``)."""
        from .testing import pointed_at

        broker = request.config.getoption("machinery_broker")
        backend = request.config.getoption("machinery_backend")
        async with pointed_at(machinery_app, broker, backend) as server:
            yield server

    @pytest_asyncio.fixture
    async def machinery_worker(machinery_server: Server) -> AsyncIterator[Worker]:
        """A worker of ``machinery_server`` running during the test (periodic tasks not sent)."""
        worker = machinery_server.new_worker("pytest", 10, run_scheduler=False, grace_period=5.0)
        async with worker:
            yield worker

else:  # pragma: no cover

    @pytest.fixture
    def machinery_server() -> Server:
        _needs_pytest_asyncio()
        raise AssertionError("unreachable")

    @pytest.fixture
    def machinery_worker() -> Worker:
        _needs_pytest_asyncio()
        raise AssertionError("unreachable")


@pytest.fixture
def machinery_sent(machinery_server: Server) -> Iterator[SentTasks]:
    """What ``machinery_server`` published during the test: ``machinery_sent.assert_sent("add", 1, 2)``."""
    from .testing import record_sent

    with record_sent(machinery_server) as sent:
        yield sent
