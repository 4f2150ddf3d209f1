"""``machinery-aio revoke UUID [--terminate]``."""

from __future__ import annotations

import asyncio

import pytest

from machinery_aio import Config, Server, Signature, State, TaskState
from machinery_aio.cli import main
from machinery_aio.drivers.redis.connection import create_redis
from machinery_aio.revoke import REVOKED, TERMINATED
from tests.drivers.redis.conftest import STANDALONE, delete_matching, need


@pytest.fixture
def env(unique: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    url = need(STANDALONE)
    config = Config(broker=url, result_backend=url, default_queue=f"{unique}_q")
    for name, value in (("BROKER", url), ("RESULT_BACKEND", url), ("DEFAULT_QUEUE", config.default_queue)):
        monkeypatch.setenv(name, value)
    yield config
    asyncio.run(_cleanup(url, unique))


async def _cleanup(url: str, unique: str) -> None:
    client = create_redis(url, Config())
    await delete_matching(client, f"*{unique}*")
    await client.aclose()


def _state(config: Config, uuid: str) -> TaskState | None:
    async def read() -> TaskState | None:
        async with Server(config) as server:
            return await server.backend.get_state(uuid)

    return asyncio.run(read())


def _store(config: Config, state: TaskState) -> None:
    async def write() -> None:
        async with Server(config) as server:
            await server.backend.set_state(state)

    asyncio.run(write())


def test_revoke_and_terminate(env: Config, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    pending = TaskState.new(Signature(uuid=f"task_{unique}_1", name="add"), State.PENDING)
    _store(env, pending)
    assert main(["revoke", pending.task_uuid]) == 0
    assert f"revoked {pending.task_uuid}" in capsys.readouterr().err
    stored = _state(env, pending.task_uuid)
    assert stored is not None
    assert stored.state is State.FAILURE
    assert stored.error == REVOKED
    assert stored.task_name == "add"
    assert main(["revoke", pending.task_uuid, "--terminate"]) == 0
    stored = _state(env, pending.task_uuid)
    assert stored is not None
    assert stored.error == TERMINATED


def test_a_finished_task_is_left_alone(env: Config, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    done = TaskState.new(Signature(uuid=f"task_{unique}_2", name="add"), State.SUCCESS)
    _store(env, done)
    assert main(["revoke", done.task_uuid]) == 1
    assert "already finished" in capsys.readouterr().err
    stored = _state(env, done.task_uuid)
    assert stored is not None
    assert stored.state is State.SUCCESS


def test_bad_input_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BROKER", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("RESULT_BACKEND", "redis://127.0.0.1:6379/1")
    assert main(["revoke", " "]) == 2
    assert "needs a task UUID" in capsys.readouterr().err
    monkeypatch.setenv("RESULT_BACKEND", "memory://")
    assert main(["revoke", "task_x"]) == 2
    assert "no worker process reads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["revoke"])
