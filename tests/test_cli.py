"""The machinery-aio command: help, send, inspect, purge, the worker banner, and clear errors."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery_aio import Arg, Config, Server, Signature, State
from machinery_aio.cli import CLIError, banner, build_parser, load_app, main, parse_cli_arg
from machinery_aio.urls import MASK
from tests.apps import memory_app
from tests.support.processes import StartCLI

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.memory_app:server"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """main() sets up logging for a command-line process; put the test process's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own exits (--help, usage errors)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- help -----------------------------------------------------------------------------------------------


def test_help_lists_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in (
        "worker",
        "send",
        "inspect",
        "purge",
        "examples:",
        "machinery-aio worker -A myapp.tasks:server --concurrency 50",
        "BROKER",
    ):
        assert word in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "worker",
            [
                "-A APP, --app APP",
                "--concurrency",
                "-Q QUEUE, --queue QUEUE",
                "-t TAG, --tag TAG",
                "--grace-period",
                "--time-limit",
                "0: unlimited",
            ],
        ),
        ("send", ["int64:1", "--countdown", "--timeout", "--no-wait", "ARG"]),
        ("inspect", ["state", "pending", "delayed", "dead", "registered", "uuid"]),
        ("purge", ["--yes", "--queue"]),
    ],
)
def test_each_command_has_helpful_help(
    capsys: pytest.CaptureFixture[str], command: str, expected: list[str]
) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    for text in expected:
        assert text in out, text


def test_worker_options_long_and_short() -> None:
    parser = build_parser()
    long = parser.parse_args(
        [
            "worker",
            "--app",
            APP,
            "--concurrency",
            "50",
            "--queue",
            "Q",
            "--tag",
            "T",
            "--grace-period",
            "5",
            "--time-limit",
            "2.5",
            "--no-scheduler",
        ]
    )
    short = parser.parse_args(["worker", "-A", APP, "-c", "50", "-Q", "Q", "-t", "T"])
    for args in (long, short):
        assert (args.app, args.concurrency, args.queue, args.tag) == (APP, 50, "Q", "T")
    assert (long.grace_period, long.time_limit, long.no_scheduler) == (5.0, 2.5, True)
    assert (short.grace_period, short.time_limit, short.no_scheduler) == (30.0, None, False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, "machinery-aio 0.1.0")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "machinery-aio"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert "usage: machinery-aio" in proc.stdout


# -- send -------------------------------------------------------------------------------------------------


def test_send_prints_the_result_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "send", "-A", APP, "add", "1", "2")
    assert code == 0, err
    assert json.loads(out) == 3
    assert "sent add task_" in err


def test_send_prints_several_results_and_typed_args(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "send", "-A", APP, "pair", "4")
    assert (code, json.loads(out)) == (0, [4, "4"])
    code, out, _ = run(capsys, "send", "-A", APP, "add", "int64:40", "uint8:2")
    assert (code, json.loads(out)) == (0, 42)


def test_send_reports_a_failed_task(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "send", "-A", APP, "fail", "oops")
    assert code == 1
    assert out == ""
    assert "FAILURE: ValueError: oops" in err


def test_send_through_the_console_script() -> None:
    script = Path(sys.executable).parent / "machinery-aio"
    proc = subprocess.run(
        [str(script), "send", "-A", APP, "add", "2", "3", "--loglevel", "ERROR"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"


def test_send_with_an_app_factory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "send", "-A", "tests.apps.memory_app:make_server", "add", "5")
    assert (code, json.loads(out)) == (0, 5)
    code, out, _ = run(capsys, "send", "-A", "tests.apps.memory_app", "add", "6")  # ":server" implied
    assert (code, json.loads(out)) == (0, 6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "-A", APP, "pair"], "task 'pair': missing a required argument: 'a'"),
        (["send", "-A", APP, "pair", "1", "2"], "task 'pair': too many positional arguments"),
        (["send", "-A", APP, "pair", "x"], "task 'pair' arg 1: expected int, got str 'x'"),
        (["send", "-A", APP, "add", "int64:1.5"], "argument 'int64:1.5': 1.5 is not an integer literal"),
        (["send", "-A", APP, "add", "uint8:300"], "300 is out of range for uint8"),
        (["send", "-A", APP, "add", "[]int64:[1,"], "'[1,' is not JSON for []int64"),
        (["send", "-A", APP, "add", "1", "--no-wait"], "--no-wait with the in-process memory://"),
        (["send", "-A", "no_such_module_here:server", "add"], "cannot import 'no_such_module_here'"),
        (
            ["send", "-A", "tests.apps.memory_app:missing", "add"],
            "module 'tests.apps.memory_app' has no attribute 'missing'",
        ),
        (["send", "-A", "tests.apps.memory_app:not_a_server", "add"], "is a str, not a machinery_aio.Server"),
        (["inspect", "-A", APP, "state"], "inspect state needs a task UUID"),
        (["purge", "-A", APP], "add --yes to confirm"),
        (["send", "--config", "/nonexistent/config.yml", "add"], "cannot read configuration file"),
    ],
)
def test_bad_input_gives_a_clear_error_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("machinery-aio: error: ")
    assert message in err
    assert "Traceback" not in err


def test_unknown_scheme_and_bad_environment_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLITEST_BROKER", "kafka://user:hunter2@host:9092")
    code, _, err = run(capsys, "send", "--env-prefix", "CLITEST_", "add", "1")
    assert code == 2
    assert "unknown broker URL scheme 'kafka'" in err
    assert "hunter2" not in err
    monkeypatch.setenv("CLITEST_BROKER", "memory://")
    monkeypatch.setenv("CLITEST_REDIS_MAX_IDLE", "lots")
    code, _, err = run(capsys, "send", "--env-prefix", "CLITEST_", "add", "1")
    assert code == 2
    assert "CLITEST_REDIS_MAX_IDLE: 'lots' is not an integer" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["send"],
        ["worker", "--concurrency", "lots"],
        ["inspect", "everything"],
        ["send", "add", "--countdown", "soon"],
    ],
)
def test_usage_errors_exit_2_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: machinery-aio" in err


def test_parse_cli_arg() -> None:
    assert parse_cli_arg("int64:5") == Arg(type="int64", value=5)
    assert parse_cli_arg('[]string:["a","b"]') == Arg(type="[]string", value=["a", "b"])
    assert parse_cli_arg('json:{"a":1}') == Arg(type="json", value={"a": 1})
    assert parse_cli_arg("string:a:b") == Arg(type="string", value="a:b")
    assert parse_cli_arg("1.5") == Arg(type="float64", value=1.5)
    assert parse_cli_arg("hello") == Arg(type="string", value="hello")
    assert parse_cli_arg('"7"') == Arg(type="string", value="7")
    assert parse_cli_arg("http://example.com") == Arg(type="string", value="http://example.com")
    assert parse_cli_arg("[1,2]") == Arg(type="[]int64", value=[1, 2])
    with pytest.raises(CLIError, match="not an integer literal"):
        parse_cli_arg("int8:1.0")


# -- inspect and purge -------------------------------------------------------------------------------------


async def test_inspect_state_prints_the_go_record(capsys: pytest.CaptureFixture[str]) -> None:
    server = memory_app.server
    result = await server.send_task(Signature(name="add", args=[Arg.of(1)]))
    args = build_parser().parse_args(["inspect", "-A", APP, "state", result.task_uuid])
    assert await args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
    assert (doc["TaskUUID"], doc["TaskName"], doc["State"]) == (result.task_uuid, "add", "PENDING")
    await server.backend.set_state_failure(result.signature, "it broke")
    assert await args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["State"], doc["Error"]) == (State.FAILURE.value, "it broke")
    await server.broker.purge()


async def test_inspect_state_of_an_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["inspect", "-A", APP, "state", "task_nothing"])
    assert await args.func(args) == 1
    assert "no state stored for task_nothing" in capsys.readouterr().err


async def test_inspect_queues_and_purge(capsys: pytest.CaptureFixture[str]) -> None:
    server = memory_app.server
    await server.send_task(Signature(name="add", args=[Arg.of(1), Arg.of(2)]))
    parser = build_parser()

    async def command(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(list(argv))
        code = await args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await command("inspect", "-A", APP, "pending")
    [summary] = json.loads(out)
    assert code == 0
    assert (summary["name"], summary["args"], summary["queue"]) == ("add", [1, 2], "memory_app_tasks")
    assert "1 pending" in err
    code, out, _ = await command("inspect", "-A", APP, "delayed")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = await command("inspect", "-A", APP, "dead")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = await command("inspect", "-A", APP, "registered")
    assert json.loads(out) == ["add", "fail", "pair", "sleep"]
    code, out, _ = await command("purge", "-A", APP, "--yes")
    assert (code, out.strip()) == (0, "purged 1 tasks from memory_app_tasks")
    assert await server.broker.get_pending_tasks() == []


# -- worker banner -------------------------------------------------------------------------------------------


def test_banner_shows_the_settings_with_passwords_masked() -> None:
    text = banner(memory_app.secret, "w1", "memory_app_secret", 50)
    assert "hunter2" not in text
    assert f"amqp://guest:{MASK}@rabbit.example:5672/" in text
    assert f"redis://:{MASK}@redis.example:6379/6" in text
    for line in (
        "worker:      w1",
        "queue:       memory_app_secret",
        "concurrency: 50",
        "results:     expire in 3600 s",
        "tasks:       add",
    ):
        assert line in text
    unlimited = banner(Server(Config()), "w2", "q", 0)
    assert "concurrency: unlimited" in unlimited
    assert "tasks:       (none)" in unlimited


def test_worker_process_never_prints_a_password(cli_process: StartCLI) -> None:
    process = cli_process(
        "worker",
        "-A",
        "tests.apps.memory_app:secret",
        "-c",
        "50",
        "-Q",
        "jobs",
        "-t",
        "banner-test",
        "--loglevel",
        "DEBUG",
    )
    process.wait_for("consuming 'jobs'")
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0
    output = process.stderr + "\n".join(process.out)
    assert "hunter2" not in output
    assert f"amqp://guest:{MASK}@rabbit.example:5672/" in output
    assert "worker:      banner-test" in output
    assert "concurrency: 50" in output


def test_load_app_accepts_a_server_or_a_factory() -> None:
    assert load_app(APP) is memory_app.server
    assert load_app("tests.apps.memory_app:make_server") is memory_app.server
    assert load_app("tests.apps.memory_app") is memory_app.server
    with pytest.raises(CLIError, match=r"not a machinery_aio\.Server"):
        load_app("tests.apps.memory_app:not_a_server")
