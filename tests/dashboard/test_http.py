"""The dashboard over plain HTTP (memory://, Redis for what needs a network server): auth, CSRF,
escaping, no secrets, the pages, the actions, the FastAPI mount."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from machinery_aio import Arg, Config, Server, Signature, State, TaskRevokedError, testing
from machinery_aio.cli import main
from machinery_aio.dashboard import dashboard_app
from machinery_aio.dashboard.security import AUTH_ENV, parse_auth
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.drivers.redis.broker import RedisBroker
from machinery_aio.result import AsyncResult
from machinery_aio.revoke import REVOKED, TERMINATED
from tests.conftest import require_server
from tests.services import wait_open
from tests.support.drivers import eventually
from tests.support.engine import free_port
from tests.support.processes import StartCLI

XSS = "<script>window.pwned=1</script>"


def _server(config: Config) -> Server:
    server = Server(config)

    @server.task("echo")
    async def echo(text: str) -> str:
        return text

    @server.task("boom")
    async def boom(text: str) -> str:
        raise RuntimeError(f"boom {text}")

    @server.task("number")
    async def number(n: int) -> int:
        return n

    return server


@pytest.fixture
def server(memory_config: Config) -> Server:
    return _server(memory_config)


def client(app: object, auth: tuple[str, str] | None = None, base: str = "http://dash") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url=base, auth=auth)


@pytest.fixture
async def dash(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with client(dashboard_app(server)) as c:
        yield c
    await server.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


# -- auth ----------------------------------------------------------------------------------------


async def test_basic_auth_answers_401_with_www_authenticate_unless_the_credentials_are_right(
    server: Server,
) -> None:
    app = dashboard_app(server, auth="admin:s3cret:with-colon")
    async with client(app) as anonymous:
        for path in ("/", "/api/overview", "/dead", "/static/dashboard.js", "/task/x"):
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic ")
        assert (await anonymous.post("/purge", data={"queue": "x"})).status_code == 401
        for header in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"admin:wrong").decode()):
            assert (await anonymous.get("/", headers={"authorization": header})).status_code == 401
    async with client(app, ("admin", "wrong")) as wrong:
        assert (await wrong.get("/")).status_code == 401
    async with client(app, ("admin", "s3cret:with-colon")) as right:
        page = await right.get("/")
        assert page.status_code == 200
        # defence in depth: no inline script would run, no framing
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text
        assert (await right.get("/static/dashboard.css")).status_code == 200


async def test_the_environment_variable_turns_auth_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, "ops:pw")
    async with client(dashboard_app(server)) as anonymous:
        assert (await anonymous.get("/")).status_code == 401
    async with client(dashboard_app(server), ("ops", "pw")) as right:
        assert (await right.get("/")).status_code == 200
    monkeypatch.delenv(AUTH_ENV)
    async with client(dashboard_app(server)) as anonymous:
        assert (await anonymous.get("/")).status_code == 200


@pytest.mark.parametrize("bad", ["admin", "admin:", ":pw", ""])
def test_malformed_auth_is_refused_without_echoing_it(bad: str, server: Server) -> None:
    with pytest.raises(ValueError, match="USER:PASSWORD") as info:
        parse_auth(bad)
    assert "pw" not in str(info.value)
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        dashboard_app(server, auth=bad)


def test_the_command_refuses_malformed_auth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "-A", "tests.apps.memory_app:server", "--auth", "nopassword"]) == 2
    assert "USER:PASSWORD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dashboard", "-A", "tests.apps.memory_app:server", "--port", "70000"])


# -- CSRF and actions ----------------------------------------------------------------------------


async def test_purge_needs_the_csrf_token_and_the_queue_name_typed(
    server: Server, dash: httpx.AsyncClient
) -> None:
    queue = server.config.default_queue
    for n in range(3):
        await server.send_task(_sig(n))
    token = csrf_of((await dash.get("/")).text)
    refused = [
        {"queue": queue, "confirm": queue},
        {"queue": queue, "confirm": queue, "csrf": "forged"},
        {"queue": queue, "confirm": "", "csrf": token},
        {"queue": queue, "confirm": "other", "csrf": token},
    ]
    for form in refused:
        response = await dash.post("/purge", data=form)
        assert response.status_code in (400, 403), form
        assert await server.broker.count_pending(queue) == 3
    assert "CSRF" in (await dash.post("/purge", data=refused[1])).text
    response = await dash.post("/purge", data={"queue": queue, "confirm": queue, "csrf": token})
    assert response.status_code == 303
    assert await server.broker.count_pending(queue) == 0
    page = await dash.get(response.headers["location"])
    assert "purged 3 task(s)" in page.text


def _sig(n: int) -> Signature:
    return Signature(name="echo", args=[Arg(type="string", value=f"t{n}")])


async def send(server: Server, name: str, text: str) -> AsyncResult[Any]:
    return await server.send_task(Signature(name=name, args=[Arg(type="string", value=text)]))


async def test_dead_letters_are_listed_raw_with_the_reason_and_requeued_or_deleted(
    server: Server, dash: httpx.AsyncClient
) -> None:
    broker = server.broker
    assert isinstance(broker, MemoryBroker)
    queue = server.config.default_queue
    await broker.push_raw(queue, f"not json {XSS}".encode())
    await broker.push_raw(
        queue, b'{"UUID":"task_x","Name":"number","Args":[{"Type":"string","Value":"abc"}]}'
    )
    await broker.push_raw(queue, b"also not json")
    async with testing.running_worker(server, 2) as worker:
        await testing.wait_idle(worker)
    page = (await dash.get("/dead")).text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    assert XSS not in page
    assert "bad arguments for task number" in page
    assert 'href="/task/task_x"' in page
    bad_args = (await dash.get("/task/task_x")).text
    assert "FAILURE" in bad_args
    assert f"a dead letter of {queue}: bad arguments for task number" in bad_args
    ids = re.findall(r'<tr data-id="([0-9a-f]+)"', page)
    assert len(ids) == 3
    token = csrf_of(page)
    overview = (await dash.get("/api/overview")).json()
    assert overview["queues"][0]["dead"] == "3"

    forged = await dash.post("/dead/delete", data={"queue": queue, "id": ids[0]})
    assert forged.status_code == 403
    assert len(await broker.get_dead_letters(queue)) == 3

    deleted = await dash.post("/dead/delete", data={"queue": queue, "id": ids[0], "csrf": token})
    assert deleted.status_code == 303
    assert "deleted 1 dead letter(s)" in (await dash.get(deleted.headers["location"])).text
    requeued = await dash.post("/dead/requeue", data={"queue": queue, "id": ids[1], "csrf": token})
    assert "requeued 1" in (await dash.get(requeued.headers["location"])).text
    assert [s.uuid for s in await broker.get_pending_tasks(queue)] == ["task_x"]
    gone = await dash.post("/dead/requeue", data={"queue": queue, "id": ids[1], "csrf": token})
    assert "requeued 0" in (await dash.get(gone.headers["location"])).text
    await dash.post("/dead/requeue", data={"queue": queue, "all": "1", "csrf": token})
    assert await broker.count_pending(queue) == 2
    assert await broker.get_dead_letters(queue) == []
    assert "no dead letters" in (await dash.get("/dead")).text


async def test_a_queue_name_with_control_characters_is_refused(dash: httpx.AsyncClient) -> None:
    response = await dash.get("/dead", params={"queue": "a\nb"})
    assert response.status_code == 400
    assert "not a queue name" in response.text


# -- revoke -------------------------------------------------------------------------------------


async def test_revoke_needs_the_csrf_token_and_stores_failure_revoked(
    server: Server, dash: httpx.AsyncClient
) -> None:
    result = await send(server, "echo", "never")
    uuid = result.task_uuid
    page = (await dash.get(f"/task/{uuid}")).text
    assert 'id="revoke-task"' in page
    assert 'id="terminate-task"' in page
    assert 'action="/revoke"' in page
    assert f'data-confirm="Revoke task {uuid}?' in page
    token = csrf_of(page)
    refused = [{"uuid": uuid}, {"uuid": uuid, "csrf": "forged"}, {"uuid": uuid, "terminate": "1", "csrf": ""}]
    for form in refused:
        response = await dash.post("/revoke", data=form)
        assert response.status_code == 403, form
        assert "CSRF" in response.text
    for bad in ("", XSS, "a/b"):
        response = await dash.post("/revoke", data={"uuid": bad, "csrf": token})
        assert response.status_code == 400, bad
        assert "not a task UUID" in response.text
        assert XSS not in response.text
    state = await result.get_state()
    assert state.state is State.PENDING

    response = await dash.post("/revoke", data={"uuid": uuid, "csrf": token})
    assert response.status_code == 303
    assert response.headers["location"] == f"/task/{uuid}?done=revoked&n=1"
    state = await result.get_state()
    assert (state.state, state.error) == (State.FAILURE, REVOKED)
    after = (await dash.get(response.headers["location"])).text
    assert "revoked 1 task(s)" in after
    assert '<span id="task-state" class="state failure">FAILURE</span>' in after
    assert '<pre id="task-error">revoked</pre>' in after
    assert 'id="revoke-task"' not in after  # finished: nothing to revoke


async def test_revoking_a_finished_task_changes_nothing_and_says_so(
    server: Server, dash: httpx.AsyncClient
) -> None:
    result = await send(server, "echo", "done")
    async with testing.running_worker(server, 2):
        assert await result.get(timeout=10) == "done"
    page = (await dash.get(f"/task/{result.task_uuid}")).text
    assert 'id="revoke-task"' not in page
    token = csrf_of((await dash.get("/")).text)  # a page opened before the task finished
    response = await dash.post("/revoke", data={"uuid": result.task_uuid, "csrf": token})
    assert response.headers["location"] == f"/task/{result.task_uuid}?done=finished&n=0"
    assert "already finished: nothing was revoked" in (await dash.get(response.headers["location"])).text
    assert (await result.get_state()).state is State.SUCCESS


async def test_a_task_revoked_from_the_mounted_dashboard_never_runs_when_a_worker_starts(
    unique: str,
) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    url = "redis://127.0.0.1:6379/0"
    server = _server(Config(broker=url, result_backend=url, default_queue=f"{unique}_tasks"))
    ran: list[str] = []

    @server.task("record")
    async def record(text: str) -> str:
        ran.append(text)
        return text

    host = FastAPI()
    host.mount("/tasks", dashboard_app(server))
    try:
        revoked = await send(server, "record", "revoked")
        page = await _get_ok(host, f"/tasks/task/{revoked.task_uuid}")
        assert 'action="/tasks/revoke"' in page
        async with client(host) as http:
            refused = await http.post("/tasks/revoke", data={"uuid": revoked.task_uuid})
            assert refused.status_code == 403
            assert (await revoked.get_state()).state is State.PENDING
            response = await http.post(
                "/tasks/revoke", data={"uuid": revoked.task_uuid, "csrf": csrf_of(page)}
            )
            assert response.headers["location"] == f"/tasks/task/{revoked.task_uuid}?done=revoked&n=1"
        async with testing.running_worker(server, 2) as worker:
            after = await send(server, "record", "after")
            assert await after.get(timeout=10) == "after"
            with pytest.raises(TaskRevokedError):
                await revoked.get(timeout=10)
            await testing.wait_idle(worker)
        assert ran == ["after"]
        shown = await _get_ok(host, f"/tasks/task/{revoked.task_uuid}")
        assert '<pre id="task-error">revoked</pre>' in shown
    finally:
        await server.broker.purge(f"{unique}_tasks")
        await server.close()


async def _get_ok(app: object, path: str) -> str:
    async with client(app) as http:
        response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.text


async def test_revoke_and_terminate_cancels_a_running_coroutine(
    server: Server, dash: httpx.AsyncClient
) -> None:
    ran: list[str] = []

    @server.task("sleepy")
    async def sleepy() -> str:
        ran.append("start")
        await asyncio.sleep(30)
        ran.append("end")
        return "woke"

    async with testing.running_worker(server, 2) as worker:
        result = await server.send_task(Signature(name="sleepy"))
        await eventually(lambda: ran == ["start"], "the task started")
        page = (await dash.get(f"/task/{result.task_uuid}")).text
        assert "STARTED" in page
        form = {"uuid": result.task_uuid, "terminate": "1", "csrf": csrf_of(page)}
        response = await dash.post("/revoke", data=form)
        assert response.headers["location"] == f"/task/{result.task_uuid}?done=terminated&n=1"
        with pytest.raises(TaskRevokedError):
            await result.get(timeout=10)
        await testing.wait_idle(worker)
    assert ran == ["start"]
    state = await result.get_state()
    assert (state.state, state.error) == (State.FAILURE, TERMINATED)
    shown = (await dash.get(f"/task/{result.task_uuid}")).text
    assert f'<pre id="task-error">{TERMINATED}</pre>' in shown


# -- pages and escaping --------------------------------------------------------------------------


async def test_task_page_shows_state_and_result_as_text_and_the_search_redirects(
    server: Server, dash: httpx.AsyncClient
) -> None:
    ok = await send(server, "echo", XSS)
    bad = await send(server, "boom", XSS)
    found = await dash.get("/task", params={"uuid": f"  {ok.task_uuid} "})
    assert found.status_code == 303
    assert found.headers["location"] == f"/task/{ok.task_uuid}"
    assert "PENDING" in (await dash.get(found.headers["location"])).text
    async with testing.running_worker(server, 2) as worker:
        await ok.get(timeout=10)
        with pytest.raises(Exception, match="boom"):
            await bad.get(timeout=10)
        await testing.wait_idle(worker)
    page = (await dash.get(f"/task/{ok.task_uuid}")).text
    assert ok.task_uuid in page
    assert "SUCCESS" in page
    assert "&#34;&lt;script&gt;window.pwned=1&lt;/script&gt;&#34; (string)" in page
    assert XSS not in page
    failed = (await dash.get(f"/task/{bad.task_uuid}")).text
    assert "FAILURE" in failed
    assert "boom &lt;script&gt;" in failed
    assert XSS not in failed


async def test_a_waiting_task_shows_its_message_args_retries_and_workflow_links(
    server: Server, dash: httpx.AsyncClient
) -> None:
    from datetime import UTC, datetime, timedelta

    from machinery_aio import Chain

    # immutable: its result is not appended to the next link's args (Go's rule)
    first = Signature(name="echo", args=[Arg(type="string", value=XSS)], retry_count=3, immutable=True)
    second = Signature(name="echo", args=[Arg(type="string", value="next")])
    await server.send_chain(Chain(first, second))
    page = (await dash.get(f"/task/{first.uuid}")).text
    assert f"ready in {server.config.default_queue}" in page
    assert "&#34;&lt;script&gt;window.pwned=1&lt;/script&gt;&#34; (string)" in page
    assert XSS not in page
    assert "retries left</dt><dd>3" in page
    assert f'href="/task/{second.uuid}"' in page  # the chain's next link
    later = Signature(name="echo", args=[Arg(type="string", value="later")])
    later.eta = datetime.now(UTC) + timedelta(hours=1)
    await server.send_task(later)
    assert "<dd>delayed</dd>" in (await dash.get(f"/task/{later.uuid}")).text
    async with testing.running_worker(server, 2):  # the delayed task stays delayed
        await server.get_async_result(first.uuid).get(timeout=10)
        assert await server.get_async_result(second.uuid).get(timeout=10) == "next"
    done = (await dash.get(f"/task/{first.uuid}")).text
    assert "SUCCESS" in done
    assert "ready in" not in done  # no search for the message of a finished task


async def test_unknown_and_malformed_uuids(dash: httpx.AsyncClient) -> None:
    unknown = await dash.get("/task/task_nothing_here")
    assert unknown.status_code == 404
    assert "No state is stored" in unknown.text
    bad = await dash.get("/task", params={"uuid": XSS})
    assert bad.status_code == 400
    assert XSS not in bad.text
    assert (await dash.get("/task", params={"uuid": ""})).headers["location"] == "/"


async def test_a_group_uuid_shows_its_members(server: Server, dash: httpx.AsyncClient) -> None:
    from machinery_aio import Group

    sigs = [Signature(name="echo", args=[Arg(type="string", value=str(n))]) for n in range(2)]
    results = await server.send_group(Group(*sigs))
    group_uuid = sigs[0].group_uuid
    async with testing.running_worker(server, 2):
        for result in results:
            await result.get(timeout=10)
    page = (await dash.get(f"/task/{group_uuid}")).text
    assert "Group" in page
    for sig in sigs:
        assert f'href="/task/{sig.uuid}"' in page
    assert page.count("SUCCESS") == 2


async def test_overview_lists_the_default_queue_and_periodic_queues_with_ready_counts(
    server: Server, dash: httpx.AsyncClient
) -> None:
    periodic = Signature(name="echo", args=[Arg(type="string", value="x")], routing_key="reports")
    server.register_periodic_task("0 0 1 1 *", "yearly", periodic)
    for n in range(2):
        await server.send_task(_sig(n))
    page = (await dash.get("/")).text
    assert ">ready<" in page
    assert f'<tr data-queue="{server.config.default_queue}">' in page
    assert '<tr data-queue="reports">' in page
    assert 'href="/dead?queue=' in page
    assert ">dead letters<" in page
    feed = (await dash.get("/api/overview")).json()
    assert feed["queues"][0] == {
        "name": server.config.default_queue,
        "ready": "2",
        "delayed": "0",
        "in_progress": "0",
        "dead": "0",
    }
    periodic_page = (await dash.get("/periodic")).text
    assert "yearly" in periodic_page
    assert "0 0 1 1 *" in periodic_page


async def test_workers_and_their_recent_failures_come_from_heartbeats(
    server: Server, dash: httpx.AsyncClient
) -> None:
    async with testing.running_worker(server, 3, heartbeat_interval=0.05) as worker:
        result = await send(server, "boom", XSS)
        with pytest.raises(Exception, match="boom"):
            await result.get(timeout=10)
        await testing.wait_idle(worker)
        for _ in range(100):
            page = (await dash.get("/failures")).text
            if result.task_uuid in page:
                break
            await _pause()
        assert f'href="/task/{result.task_uuid}"' in page
        assert "boom &lt;script&gt;" in page
        assert XSS not in page
        workers = (await dash.get("/api/overview")).json()["workers"]
        assert [(w["name"], w["concurrency"]) for w in workers] == [(worker.tag, 3)]


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


# -- secrets ------------------------------------------------------------------------------------


async def test_no_page_and_no_log_line_shows_a_password(
    caplog: pytest.LogCaptureFixture, unique: str
) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    caplog.set_level(logging.DEBUG)
    url = "redis://:Pa55word-in-url@127.0.0.1:6379/0"  # the local Redis lets any password in
    server = _server(Config(broker=url, result_backend=url, default_queue=f"{unique}_tasks"))
    async with client(dashboard_app(server)) as dash:
        pages = [await dash.get(p) for p in ("/", "/dead", "/task/task_x", "/periodic", "/failures")]
    await server.close()
    assert [p.status_code for p in pages] == [200, 200, 404, 200, 200]
    assert "redis://:****@127.0.0.1:6379/0" in pages[0].text
    down = "redis://:Pa55word-in-url@127.0.0.1:1/0"  # nothing listens: the page says why
    server = _server(Config(broker=down, result_backend=down, default_queue=f"{unique}_tasks"))
    async with client(dashboard_app(server)) as dash:
        failed = await dash.get("/")
    await server.close()
    assert failed.status_code == 503
    assert "cannot connect to the broker redis://:****@127.0.0.1:1/0" in failed.text
    for page in [*pages, failed]:
        assert "Pa55word" not in page.text
    assert "Pa55word" not in caplog.text
    assert "dashboard: GET / failed" in caplog.text


# -- mounting ----------------------------------------------------------------------------------


async def test_mounted_in_fastapi_every_link_and_asset_stays_under_the_mount(unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    url = "redis://127.0.0.1:6379/0"
    server = _server(Config(broker=url, result_backend=url, default_queue=f"{unique}_tasks"))
    host = FastAPI()
    host.mount("/tasks", dashboard_app(server))
    async with client(host) as http:
        page = await http.get("/tasks/")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action)="([^"]*)"', page.text)
        assert links
        assert all(link.startswith("/tasks/") for link in links if link != "data:,"), links
        assert (await http.get("/tasks/static/dashboard.js")).status_code == 200
        assert (await http.get("/tasks/api/overview")).json()["queues"][0]["name"] == f"{unique}_tasks"
        found = await http.get("/tasks/task", params={"uuid": "task_abc"})
        assert found.headers["location"] == "/tasks/task/task_abc"
    await server.close()


# -- cost and other brokers ----------------------------------------------------------------------


async def test_a_refresh_costs_the_same_commands_however_long_the_queue(
    unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    from redis.asyncio.client import Redis

    from machinery_aio.dashboard.data import Reader

    url = "redis://127.0.0.1:6379/0"
    server = _server(Config(broker=url, result_backend=url, default_queue=f"{unique}_tasks"))
    broker = server.broker
    assert isinstance(broker, RedisBroker)
    commands: list[str] = []
    original = Redis.execute_command

    async def counted(self: Redis, *args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(self, *args, **options)  # type: ignore[no-untyped-call]

    async def refresh() -> list[str]:
        commands.clear()
        monkeypatch.setattr(Redis, "execute_command", counted)
        try:
            await Reader(server).overview()
        finally:
            monkeypatch.undo()
        return sorted(commands)

    try:
        await server.connect()
        empty = await refresh()
        await broker.client.rpush(f"{unique}_tasks", *[b"x"] * 3000)
        await broker.client.rpush(f"{{{unique}_tasks}}:dead", *[b"{}"] * 700)
        assert await refresh() == empty
        assert len(empty) <= 4  # LLEN, LLEN, ZRANGE, HGETALL
    finally:
        await broker.purge(f"{unique}_tasks")
        await broker.purge_dead_letters(f"{unique}_tasks")
        await server.close()


async def test_on_rabbitmq_delayed_shows_as_unknown_and_dead_letters_are_requeued(unique: str) -> None:
    require_server("127.0.0.1", 5672, "RabbitMQ")
    require_server("127.0.0.1", 6379, "Redis")
    from tests.support.rabbitmq import AMQP_URL

    queue = f"{unique}_tasks"
    server = _server(Config(broker=AMQP_URL, result_backend="redis://127.0.0.1:6379/0", default_queue=queue))
    sig = _sig(1)
    await server.send_task(sig)
    consumer = server.broker.consumer(queue, prefetch=1, tag="set-aside")
    [delivery] = await eventually(lambda: consumer.fetch(1), "the task")
    await consumer.dead_letter(delivery, "set aside")
    await consumer.close()
    await eventually(lambda: server.broker.count_dead_letters(queue), "the dead letter")
    try:
        async with client(dashboard_app(server)) as dash:
            feed = (await dash.get("/api/overview")).json()
            page = (await dash.get("/dead")).text
            [letter_id] = re.findall(r'<tr data-id="([0-9a-f]+)"', page)
            done = await dash.post("/dead/requeue", data={"id": letter_id, "csrf": csrf_of(page)})
            assert "requeued 1 dead letter(s)" in (await dash.get(done.headers["location"])).text
        assert await eventually(lambda: server.broker.count_pending(queue), "the requeued task") == 1
        assert [s.uuid for s in await server.broker.get_pending_tasks(queue)] == [sig.uuid]
    finally:
        await server.broker.purge(queue)
        await server.close()
    row = feed["queues"][0]
    assert (row["ready"], row["delayed"], row["dead"]) == ("0", "—", "1")
    assert "guest:guest" not in page


class _ListingOnly(MemoryBroker):
    """A memory broker without dead letters, as some brokers are."""

    capabilities = replace(MemoryBroker.capabilities, dead_letters=False, edit_dead_letters=False)


async def test_a_broker_without_dead_letters_says_so_and_refuses_the_actions(memory_config: Config) -> None:
    server = Server(memory_config, broker=_ListingOnly(memory_config))
    async with client(dashboard_app(server)) as dash:
        feed = (await dash.get("/api/overview")).json()
        page = await dash.get("/dead")
        csrf = csrf_of((await dash.get("/")).text)
        refused = await dash.post("/dead/requeue", data={"all": "1", "csrf": csrf})
    assert feed["queues"][0]["dead"] == "—"
    assert "keeps no dead letters" in page.text
    assert refused.status_code == 400
    assert "cannot requeue or delete dead letters" in refused.text


def test_the_dashboard_listens_on_this_machine_only_by_default() -> None:
    from machinery_aio.cli import build_parser

    args = build_parser().parse_args(["dashboard", "-A", "x:server"])
    assert (args.host, args.port, args.auth) == ("127.0.0.1", 8000, None)


async def test_a_memory_demo_in_one_process_shows_its_embedded_worker_and_tasks(
    memory_config: Config,
) -> None:
    from machinery_aio.integrations.fastapi import machinery_lifespan

    server = _server(memory_config)
    lifespan = machinery_lifespan(server, run_worker=True, concurrency=2)
    app = FastAPI(lifespan=lifespan)
    app.mount("/tasks", dashboard_app(server))
    async with lifespan(app), client(app) as http:  # the lifespan, as uvicorn runs it
        result = await send(server, "echo", XSS)
        await result.get(timeout=10)
        task = await http.get(f"/tasks/task/{result.task_uuid}")
        assert "SUCCESS" in task.text
        assert XSS not in task.text
        feed = (await http.get("/tasks/api/overview")).json()
        assert [w["concurrency"] for w in feed["workers"]] == [2]
        assert feed["queues"][0]["name"] == memory_config.default_queue


async def test_the_command_serves_on_127_0_0_1_with_basic_auth_from_the_environment(
    cli_process: StartCLI,
) -> None:
    port = free_port()
    env = {AUTH_ENV: "ops:Env-Pa55"}
    dash = cli_process("dashboard", "-A", "tests.apps.memory_app:server", "--port", str(port), env=env)
    dash.wait_for(f"dashboard on http://127.0.0.1:{port}/ (basic auth on)")
    assert wait_open("127.0.0.1", port, 30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        refused = await http.get("/")
        allowed = await http.get("/", auth=("ops", "Env-Pa55"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    assert allowed.status_code == 200
    assert "Env-Pa55" not in dash.stderr
