"""The pytest plugin, as a user meets it: sample projects run by pytest (pytester), with the
plugin loaded from its entry point and no conftest.py unless the project has one."""

from __future__ import annotations

import pytest

from tests.conftest import require_server

pytest_plugins = ("pytester",)

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"

APP = """
from machinery_aio import Config, Server

# The app's real configuration: nothing listens on port 1, so a test that reaches it fails.
server = Server(Config(broker="redis://127.0.0.1:1/0", result_backend="redis://127.0.0.1:1/0",
                       default_queue="{queue}", results_expire_in=60))  # what a test leaves expires

@server.task("add")
async def add(a: int, b: int) -> int:
    return a + b

@server.task("notify")
async def notify(user: str) -> str:
    return f"told {{user}}"

async def signup(user: str) -> None:
    await notify.delay(user)
"""

AUTO_TESTS = """
import myapp.tasks
from machinery_aio import testing

async def test_the_fixture_is_my_server_on_memory(machinery_server, machinery_worker):
    assert machinery_server is myapp.tasks.server
    assert machinery_server.config.broker.startswith("memory://")
    result = await myapp.tasks.add.delay(1, 2)
    assert await result.get(timeout=10) == 3

async def test_sent_tasks_are_recorded_and_the_queue_drains(
    machinery_server, machinery_worker, machinery_sent
):
    await myapp.tasks.signup("ada")
    machinery_sent.assert_sent("notify", "ada", times=1)
    machinery_sent.assert_not_sent("add")
    await testing.wait_idle(machinery_worker)
    state = await machinery_server.get_async_result(machinery_sent.signatures[0].uuid).get_state()
    assert state.is_success()

def test_the_server_is_restored_after_the_tests():
    assert myapp.tasks.server.config.broker == "redis://127.0.0.1:1/0"
    assert myapp.tasks.server.broker.url == "redis://127.0.0.1:1/0"
"""


def project(pytester: pytest.Pytester, queue: str = "plugin_tests") -> None:
    pytester.mkpydir("myapp")
    pytester.path.joinpath("myapp", "tasks.py").write_text(APP.format(queue=queue))


def test_auto_mode_with_the_app_in_pyproject(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_mode = "auto"
        asyncio_default_fixture_loop_scope = "function"
        machinery_app = "myapp.tasks:server"
        """
    )
    pytester.makepyfile(test_app=AUTO_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_strict_mode_with_the_app_in_pytest_ini(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        machinery_app = myapp.tasks:server
        """
    )
    pytester.makepyfile(
        test_app="""
        import pytest
        import myapp.tasks

        @pytest.mark.asyncio
        async def test_a_task_runs(machinery_server, machinery_worker, machinery_sent):
            result = await myapp.tasks.add.delay(2, 3)
            assert await result.get(timeout=10) == 5
            machinery_sent.assert_sent("add", 2, 3)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_an_overridden_machinery_app_fixture_and_eager_mode(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import pytest
        import myapp.tasks

        @pytest.fixture
        def machinery_app():
            return myapp.tasks.server
        """
    )
    pytester.makepyfile(
        test_app="""
        import myapp.tasks

        async def test_eager_runs_inline(machinery_server):
            assert machinery_server.config.broker == "eager://"
            result = await myapp.tasks.add.delay(4, 5)
            assert (await result.get_state()).is_success()
            assert await result.get() == 9
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--machinery-broker", "eager://")
    result.assert_outcomes(passed=1)


def test_machinery_broker_sends_to_a_real_broker(pytester: pytest.Pytester, unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    project(pytester, queue=f"{unique}_q")
    pytester.makeini(INI + "machinery_app = myapp.tasks:server\n")
    pytester.makepyfile(
        test_app="""
        import myapp.tasks

        async def test_on_redis(machinery_server, machinery_worker):
            assert machinery_server.config.broker == "redis://127.0.0.1:6379/3"
            assert machinery_server.config.result_backend == "redis://127.0.0.1:6379/3"
            result = await myapp.tasks.add.delay(20, 22)
            assert await result.get(timeout=10) == 42
            assert await machinery_server.broker.count_pending() == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--machinery-broker", "redis://127.0.0.1:6379/3")
    result.assert_outcomes(passed=1)


def test_without_the_app_the_fixture_says_what_to_set(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makeini(INI)
    pytester.makepyfile(
        test_app="""
        async def test_needs_the_server(machinery_server):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set machinery_app = 'package.module:server' in pytest.ini*"])


def test_the_example_in_docs_testing_md_passes(pytester: pytest.Pytester) -> None:
    from tests.test_docs import ROOT, blocks

    for block in blocks(ROOT / "docs" / "testing.md"):
        if block.file is not None and block.language == "python":
            target = pytester.path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
    (pytester.path / "myapp" / "__init__.py").touch()  # tests/ stays a plain folder of test files
    pytester.makeini(INI + "machinery_app = myapp.tasks:server\npythonpath = .\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "tests")
    result.assert_outcomes(passed=2)
