"""machinery_aio.testing: loading a user's server, pointing it at memory:// and back, recording
what was sent, and waiting until a worker's queue is idle."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery_aio import Chain, Config, Server
from machinery_aio.config import ConfigError
from machinery_aio.testing import load_app, memory_server, pointed_at, record_sent, running_worker, wait_idle


@pytest.fixture
def app_module(unique: str) -> Iterator[str]:
    """A module ``<unique>_app`` with a server, a factory and other attributes."""
    module = types.ModuleType(f"{unique}_app")
    server = Server(Config(broker="redis://127.0.0.1:1/0", result_backend="redis://127.0.0.1:1/0"))
    module.server = server  # type: ignore[attr-defined]
    module.make = lambda: server  # type: ignore[attr-defined]
    module.number = 7  # type: ignore[attr-defined]

    async def handler() -> None:
        pass

    module.handler = handler  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def test_load_app_finds_a_server_or_a_factory(app_module: str) -> None:
    server = load_app(f"{app_module}:server")
    assert isinstance(server, Server)
    assert load_app(f"{app_module}:make") is server


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("", "must look like 'package.module:server'"),
        (":missing", "has no 'missing'"),
        (":number", "is a int, not a machinery_aio Server"),
        (":handler", "is a function, not a machinery_aio Server"),
    ],
)
def test_load_app_rejects_what_is_not_a_server(app_module: str, attribute: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_app(app_module + attribute)


def test_load_app_says_which_module_cannot_be_imported() -> None:
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_package\.tasks'"):
        load_app("no_such_package.tasks:server")


async def test_pointed_at_runs_the_server_on_memory_and_restores_it(app_module: str) -> None:
    server = load_app(f"{app_module}:server")
    broker, backend, publisher = server.broker, server.backend, server.publisher

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async def a_failing_test() -> None:
        async with pointed_at(server) as pointed:
            assert pointed is server
            assert server.config.broker.startswith("memory://test-")
            assert server.publisher is publisher  # delay() handles keep working
            async with running_worker(server) as worker:
                assert await (await add.delay(1, 2)).get(timeout=10) == 3
                await wait_idle(worker)
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        await a_failing_test()
    assert (server.broker, server.backend) == (broker, backend)
    assert publisher.broker is broker
    assert server.config.broker == "redis://127.0.0.1:1/0"


async def test_pointed_at_a_given_broker_uses_its_own_backend(app_module: str) -> None:
    server = load_app(f"{app_module}:server")
    async with pointed_at(server, "eager://") as pointed:
        assert pointed.config.result_backend == "eager://"
        assert pointed.config.lock == ""


async def test_record_sent_lists_sends_and_callbacks_and_asserts_them() -> None:
    server = Server(Config(broker="eager://", result_backend="eager://"))

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    with record_sent(server) as sent:
        await add.delay(1, 2)
        await server.send_chain(Chain(add.signature(1), add.signature(5)))
    assert sent.names() == ["add", "add", "add"]
    assert sent.assert_sent("add", 1, 2).python_args() == [1, 2]
    sent.assert_sent("add", 5, 1)  # the chain's second link, with the first one's result
    sent.assert_sent("add", times=3)
    sent.assert_not_sent("multiply")
    with pytest.raises(AssertionError, match=r"add\(9\) was not sent; sent: add\(1, 2\)"):
        sent.assert_sent("add", 9)
    with pytest.raises(AssertionError, match="sent 3 times, not 1"):
        sent.assert_sent("add", times=1)
    with pytest.raises(AssertionError, match="add was sent 3 times"):
        sent.assert_not_sent("add")
    await add.delay(0, 0)
    assert len(sent) == 3  # the block is closed: nothing more is recorded
    sent.clear()
    assert list(sent) == []


async def test_wait_idle_waits_for_delayed_tasks_and_times_out() -> None:
    server = memory_server()

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with running_worker(server) as worker:
        result = await add.with_options(countdown=0.3).delay(1, 1)
        await wait_idle(worker)
        assert (await result.get_state()).is_success()  # the delayed task counted as busy
        await add.with_options(countdown=3600).delay(1, 1)
        with pytest.raises(TimeoutError, match="queue"):
            await wait_idle(worker, timeout=0.2)


async def test_pointed_at_does_not_reload_the_apps_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("broker: redis://127.0.0.1:1/0\nresult_backend: redis://127.0.0.1:1/0\n")
    server = Server(Config.from_yaml(path, keep_reloading=True))
    async with pointed_at(server):
        assert not server.config.reloads  # a reload would put redis:// back into the test's config
    assert server.config.reloads
