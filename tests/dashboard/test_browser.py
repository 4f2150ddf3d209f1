"""The dashboard in headless Chromium (Debian's chromium and chromedriver, driven by Selenium)
against a Redis-backed app served by ``machinery-aio dashboard``, with a real worker process.

Screenshots of each page go to ``test-artifacts/dashboard/`` (``MACHINERY_ARTIFACTS`` overrides
the folder); with ``MACHINERY_UPDATE_SCREENSHOTS=1`` they also replace those in ``docs/images/``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.redis.broker import RedisBroker
from tests.conftest import IN_CI, require_server
from tests.services import REDIS, wait_open
from tests.support.drivers import eventually
from tests.support.engine import free_port
from tests.support.processes import ROOT, CLIProcess, StartCLI

pytestmark = pytest.mark.timeout(180)

USER, PASSWORD = "admin", "dash-Pw-7"
XSS = "<script>window.pwned=1</script>"
REDIS_URL = f"redis://{REDIS[0]}:{REDIS[1]}/0"
ARTIFACTS = Path(os.environ.get("MACHINERY_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
DOCS_IMAGES = ROOT / "docs" / "images"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,860",
]
WAIT = 30.0
"""Seconds a wait for the page may take before the test fails (a hang guard)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        message = (
            "chromium and chromedriver are not installed; run scripts/test (tests.services installs them)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="dash-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(WAIT)
    chrome.execute_cdp_cmd("Network.enable", {})
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def authenticate(chrome: WebDriver, user: str = USER, password: str = PASSWORD) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    chrome.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def anonymous(chrome: WebDriver) -> None:
    chrome.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def until(chrome: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        return WebDriverWait(chrome, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        main = chrome.find_elements(By.TAG_NAME, "main")
        shown = main[0].text if main else chrome.page_source
        raise AssertionError(f"waited {WAIT:g} s for {what}; the page shows:\n{shown}") from None


def text_of(chrome: WebDriver, css: str) -> str:
    """The text of the first element ``css`` selects ("" if none), read in one step (the live
    updates replace elements)."""
    text = chrome.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
    )
    return " ".join(str(text).split())


def reloaded_text(chrome: WebDriver, css: str) -> str:
    """:func:`text_of` after reloading the page (for the pages that do not update themselves)."""
    chrome.refresh()
    return text_of(chrome, css)


def screenshot(chrome: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    chrome.save_screenshot(str(path))
    if os.environ.get("MACHINERY_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMAGES / path.name)


@dataclass
class Stack:
    """The dashboard command on ``url`` for ``queue``, and a way to start workers."""

    url: str
    queue: str
    env: dict[str, str]
    start_worker: Callable[[], CLIProcess]

    def run(self, coro: Callable[[Server], Any]) -> Any:
        """Run ``coro(server)`` with a server of the app's queue (sending, setting messages aside)."""

        async def go() -> Any:
            server = Server(Config(broker=REDIS_URL, result_backend=REDIS_URL, default_queue=self.queue))
            try:
                return await coro(server)
            finally:
                await server.close()

        return asyncio.run(go())

    def send(self, name: str, *args: Arg, times: int = 1) -> str:
        """Send the task ``times`` times; returns the last one's UUID."""

        async def go(server: Server) -> str:
            sigs = [Signature(name=name, args=list(args)) for _ in range(times)]
            for sig in sigs:
                await server.send_task(sig)
            return sigs[-1].uuid

        return str(self.run(go))

    def wait_result(self, uuid: str) -> None:
        async def go(server: Server) -> None:
            await server.backend.wait_for_state(uuid, WAIT)

        self.run(go)


@pytest.fixture
def stack(unique: str, cli_process: StartCLI) -> Iterator[Stack]:
    require_server(*REDIS, "Redis")
    queue = f"{unique}_tasks"
    env = {"BROKER": REDIS_URL, "RESULT_BACKEND": REDIS_URL, "DEFAULT_QUEUE": queue}
    port = free_port()
    app = "tests.apps.dashboard_app:server"
    dash = cli_process("dashboard", "-A", app, "--port", str(port), "--auth", f"{USER}:{PASSWORD}", env=env)
    dash.wait_for("dashboard on http://127.0.0.1:")
    assert wait_open("127.0.0.1", port, WAIT)

    def start_worker() -> CLIProcess:
        worker = cli_process(
            "worker", "-A", app, "-c", "4", "--heartbeat-interval", "0.5", "--tag", f"{unique}-w", env=env
        )
        worker.wait_for("consuming")
        return worker

    yield Stack(f"http://127.0.0.1:{port}", queue, env, start_worker)
    assert PASSWORD not in dash.stderr
    asyncio.run(_cleanup(queue))


async def _cleanup(queue: str) -> None:
    server = Server(Config(broker=REDIS_URL, result_backend=REDIS_URL, default_queue=queue))
    broker = server.broker
    assert isinstance(broker, RedisBroker)
    await broker.purge(queue)
    await broker.purge_dead_letters(queue)
    await server.close()


def _alert(chrome: WebDriver) -> Any:
    try:
        return chrome.switch_to.alert
    except NoAlertPresentException:
        return None


def cell(chrome: WebDriver, queue: str, field: str) -> str:
    return text_of(chrome, f'tr[data-queue="{queue}"] [data-field="{field}"]')


# -- tests ----------------------------------------------------------------------------------------


def test_401_without_credentials_then_the_ready_count_follows_the_queue_without_a_reload(
    browser: WebDriver, stack: Stack
) -> None:
    anonymous(browser)
    browser.get(stack.url + "/")
    status = browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    assert status == 401
    authenticate(browser, USER, "wrong")
    browser.get(stack.url + "/")
    assert (
        browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus") == 401
    )

    authenticate(browser)
    browser.get(stack.url + "/")
    assert "ready" in text_of(browser, "#queues thead")
    assert cell(browser, stack.queue, "ready") == "0"
    browser.execute_script("window.sameDocument = true")
    stack.send("nap", Arg(type="float64", value=0.25), times=40)
    until(browser, lambda d: cell(d, stack.queue, "ready") == "40", "40 ready tasks")
    stack.start_worker()
    until(
        browser, lambda d: f"{stack.queue.removesuffix('_tasks')}-w" in text_of(d, "#workers"), "the worker"
    )
    until(browser, lambda d: cell(d, stack.queue, "ready") == "0", "the queue drained")
    until(browser, lambda d: text_of(d, "#workers tbody td:nth-child(7)") == "40", "40 processed")
    assert browser.execute_script("return window.sameDocument") is True  # never reloaded
    screenshot(browser, "overview")
    log = browser.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [e["message"] for e in log if e["level"] == "SEVERE"]
    assert [e for e in errors if "401" not in e] == []  # no script error, nothing the CSP blocked


def test_a_task_found_from_the_search_box_shows_its_state_and_args_render_as_text(
    browser: WebDriver, stack: Stack
) -> None:
    stack.start_worker()
    ok = stack.send("echo", Arg(type="string", value=XSS))
    bad = stack.send("boom", Arg(type="string", value=XSS))
    stack.wait_result(ok)
    stack.wait_result(bad)
    authenticate(browser)
    browser.get(stack.url + "/")
    search = browser.find_element(By.ID, "task-search")
    search.send_keys(ok, Keys.ENTER)
    until(browser, lambda d: text_of(d, "#task-state") == "SUCCESS", "the task page")
    assert text_of(browser, "#task-uuid") == ok
    assert text_of(browser, "#task-result") == f'"{XSS}" (string)'
    assert browser.execute_script("return window.pwned") is None
    screenshot(browser, "task")

    browser.get(f"{stack.url}/task/{bad}")
    assert text_of(browser, "#task-state") == "FAILURE"
    assert XSS in text_of(browser, "#task-error")
    assert browser.execute_script("return window.pwned") is None
    browser.find_element(By.LINK_TEXT, "Recent failures").click()
    until(browser, lambda d: bad in reloaded_text(d, "#failures"), "the failure reported in a heartbeat")
    assert browser.execute_script("return window.pwned") is None
    screenshot(browser, "failures")


def test_a_dead_letter_requeued_from_the_page_runs(browser: WebDriver, stack: Stack) -> None:
    async def set_aside(server: Server) -> str:
        sig = Signature(name="echo", args=[Arg(type="string", value="back from the dead")])
        await server.send_task(sig)
        consumer = server.broker.consumer(stack.queue, prefetch=1, tag="set-aside")
        [delivery] = await eventually(lambda: consumer.fetch(1), "the task")
        await consumer.dead_letter(delivery, "set aside by an older release")
        await consumer.close()
        broker = server.broker
        assert isinstance(broker, RedisBroker)
        await broker.client.rpush(stack.queue, f"not a task {XSS}")
        return sig.uuid

    uuid = stack.run(set_aside)
    stack.start_worker()  # sets the message that is not JSON aside as well
    authenticate(browser)
    browser.get(stack.url + "/")
    until(browser, lambda d: cell(d, stack.queue, "dead") == "2", "two dead letters")
    browser.find_element(By.LINK_TEXT, "dead letters").click()
    until(browser, lambda d: "set aside by an older release" in text_of(d, "#dead-letters"), "the list")
    rows = browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
    assert len(rows) == 2
    for details in browser.find_elements(By.CSS_SELECTOR, "#dead-letters details"):
        details.click()  # show the raw messages
    assert f"not a task {XSS}" in text_of(browser, "#dead-letters")
    assert browser.execute_script("return window.pwned") is None
    screenshot(browser, "dead-letters")

    row = next(r for r in rows if uuid in r.text)
    row.find_element(By.CSS_SELECTOR, "button.requeue").click()
    until(browser, lambda d: "requeued 1 dead letter(s)" in text_of(d, ".notice"), "the requeue")
    browser.get(f"{stack.url}/task/{uuid}")
    stack.wait_result(uuid)
    browser.refresh()
    assert text_of(browser, "#task-state") == "SUCCESS"
    assert text_of(browser, "#task-result") == '"back from the dead" (string)'


def test_mounted_under_tasks_in_fastapi_with_the_periodic_page_and_a_revoke(
    browser: WebDriver, stack: Stack
) -> None:
    port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.apps.dashboard_app:host", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **stack.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_open("127.0.0.1", port, WAIT)
        anonymous(browser)  # the host app sets no auth
        browser.get(f"http://127.0.0.1:{port}/tasks/")
        background = browser.execute_script(
            "return getComputedStyle(document.querySelector('header')).backgroundColor"
        )
        assert background == "rgb(255, 255, 255)"  # the stylesheet came from /tasks/static/
        first = text_of(browser, "#taken-at")
        until(browser, lambda d: text_of(d, "#taken-at") != first, "a live update from /tasks/api/overview")
        browser.find_element(By.LINK_TEXT, "Periodic tasks").click()
        until(browser, lambda d: "weekly-report" in text_of(d, "#periodic"), "the periodic page")
        assert browser.current_url == f"http://127.0.0.1:{port}/tasks/periodic"
        screenshot(browser, "periodic")

        uuid = stack.send("echo", Arg(type="string", value="to revoke"))  # no worker runs it
        browser.get(f"http://127.0.0.1:{port}/tasks/task/{uuid}")
        assert text_of(browser, "#task-state") == "PENDING"
        browser.find_element(By.ID, "revoke-task").click()
        until(browser, lambda d: _alert(d) is not None, "the confirmation")
        browser.switch_to.alert.dismiss()  # cancelled: nothing is sent
        assert reloaded_text(browser, "#task-state") == "PENDING"
        browser.find_element(By.ID, "revoke-task").click()
        until(browser, lambda d: _alert(d) is not None, "the confirmation")
        browser.switch_to.alert.accept()
        until(browser, lambda d: "revoked 1 task(s)" in text_of(d, ".notice"), "the revoke")
        assert browser.current_url.startswith(f"http://127.0.0.1:{port}/tasks/task/{uuid}?")
        assert text_of(browser, "#task-state") == "FAILURE"
        assert text_of(browser, "#task-error") == "revoked"
        assert browser.find_elements(By.ID, "revoke-task") == []
    finally:
        host.terminate()
        host.wait(WAIT)
