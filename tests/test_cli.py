"""The machinery-aio command: help, send, inspect, purge, the worker banner, and clear errors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery_aio import Arg, Config, Server, Signature, State, TaskState
from machinery_aio.cli import CLIError, banner, build_parser, load_app, main, parse_cli_arg
from machinery_aio.urls import MASK
from tests.apps import memory_app
from tests.conftest import require_server
from tests.support.engine import free_port
from tests.support.processes import StartCLI
from tests.support.redis import eventually

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.memory_app:server"
REDIS_URL = "redis://127.0.0.1:6379/1"
"""The Redis database of the CLI tests; every key they make contains the test's unique name."""


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
    assert "FAILURE: oops" in err  # Go's error text: the message alone


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
        (
            ["send", "-A", "tests.apps.memory_app:not_a_server", "add"],
            "a machinery_aio.Server was expected (or a function with no arguments returning one), "
            "but 'not_a_server' is a str",
        ),
        (
            ["send", "-A", "tests.apps.memory_app:returns_nothing_useful", "add"],
            "returns_nothing_useful() returned a str, not a machinery_aio.Server",
        ),
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
    ("env", "argv", "message"),
    [
        (
            {"BROKER": "redis://:hunter2@127.0.0.1:1/0", "RESULT_BACKEND": "null://"},
            ["send", "add", "1"],
            "the result backend null:// stores no results: use --no-wait",
        ),
        (
            {"BROKER": "redis://:hunter2@127.0.0.1:1/0", "RESULT_BACKEND": "memory://"},
            ["send", "add", "1"],
            "the result backend is memory://, which no worker process can write to",
        ),
        (
            {"BROKER": "amqp://guest:hunter2@127.0.0.1:1/", "RESULT_BACKEND": "null://"},
            ["inspect", "delayed"],
            f"amqp://guest:{MASK}@127.0.0.1:1/ cannot list delayed tasks",
        ),
    ],
)
def test_what_a_setup_cannot_do_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"CLITEST_{name}", value)
    code, out, err = run(capsys, *argv, "--env-prefix", "CLITEST_")
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("machinery-aio: error: ")
    assert message in line
    assert "hunter2" not in line


def test_send_with_a_countdown_waits_for_it(capsys: pytest.CaptureFixture[str], unique: str) -> None:
    started = time.monotonic()
    code, out, _ = run(capsys, "send", "-A", APP, "add", "2", "3", "--countdown", "0.3", "-Q", unique)
    assert (code, json.loads(out)) == (0, 5)
    assert time.monotonic() - started >= 0.3  # the task could not run before its ETA


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
    await server.backend.set_state(TaskState.new(result.signature, State.FAILURE, error="it broke"))
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
    assert json.loads(out) == ["add", "fail", "pair", "sleep", "touch"]
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
    with pytest.raises(CLIError, match=r"a machinery_aio\.Server was expected"):
        load_app("tests.apps.memory_app:not_a_server")


# -- -A names something that is not a Server: refused, never called ---------------------------------------


@pytest.mark.parametrize(
    ("attr", "what"),
    [
        ("touch", "is a task"),
        ("needs_argument", "is a function"),
        ("returns_a_number", "is a function"),
        ("NotAServer", "is a type"),
    ],
)
@pytest.mark.parametrize("command", [["send", "touch"], ["worker"], ["inspect", "registered"]])
def test_app_that_is_not_a_server_is_refused_and_never_called(
    capsys: pytest.CaptureFixture[str], attr: str, what: str, command: list[str]
) -> None:
    memory_app.CALLED.clear()
    code, out, err = run(capsys, command[0], "-A", f"tests.apps.memory_app:{attr}", *command[1:])
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("machinery-aio: error: --app tests.apps.memory_app:")
    assert "a machinery_aio.Server was expected" in line
    assert f"but {attr!r} {what}" in line
    assert memory_app.CALLED == []  # the object was never called


# -- nothing configured: memory:// cannot work across processes ------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["send", "add", "1"],
        ["send", "add", "1", "--no-wait"],
        ["inspect", "pending"],
        ["inspect", "state", "task_x"],
        ["purge", "--yes"],
        ["worker"],
        ["beat"],
    ],
)
def test_no_broker_and_no_app_is_refused_clearly(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = run(capsys, *command, "--env-prefix", "CLITEST_NOTHING_SET_")
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("machinery-aio: error: no broker is configured in the environment ")
    assert "CLITEST_NOTHING_SET_BROKER" in line
    assert "-A module:server" in line


def test_no_broker_in_a_config_file_is_refused_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("default_queue: jobs\n")
    code, _, err = run(capsys, "send", "add", "1", "--config", str(path))
    assert code == 2
    assert f"no broker is configured in --config {path}" in err


# -- send of a name the app does not know -------------------------------------------------------------------


def test_send_warns_when_the_app_does_not_know_the_task(
    capsys: pytest.CaptureFixture[str], unique: str
) -> None:
    code, _, err = run(capsys, "send", "-A", APP, "nobody_knows", "-Q", unique, "--timeout", "0.3")
    assert code == 3  # no worker here can run it: the wait times out
    assert (
        f"machinery-aio: warning: no task 'nobody_knows' is registered in {APP} "
        "(registered: add, fail, pair, sleep, touch); only a worker that knows it can run it"
    ) in err
    code, _, err = run(capsys, "send", "-A", APP, "add", "1", "-Q", unique)
    assert code == 0
    assert "warning" not in err


# -- inspect pending --limit ------------------------------------------------------------------------------


async def test_inspect_pending_lists_at_most_the_limit_and_counts_them_all(
    capsys: pytest.CaptureFixture[str], unique: str
) -> None:
    server = memory_app.server
    sent = await server.send_tasks(
        [Signature(name="add", args=[Arg.of(i)], routing_key=unique) for i in range(5)]
    )
    parser = build_parser()

    async def inspect(*extra: str) -> tuple[list[dict[str, object]], str]:
        args = parser.parse_args(["inspect", "-A", APP, "pending", "-Q", unique, *extra])
        assert await args.func(args) == 0
        out, err = capsys.readouterr()
        return json.loads(out), err

    try:
        listed, err = await inspect("--limit", "2")
        assert [t["uuid"] for t in listed] == [r.task_uuid for r in sent[:2]]
        assert f"5 pending in {unique!r} (first 2 shown)" in err
        listed, err = await inspect()  # the default limit, 100
        assert len(listed) == 5
        assert f"5 pending in {unique!r}\n" in err
    finally:
        await server.broker.purge(unique)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_a_clear_error(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    code, out, err = run(capsys, "inspect", "-A", APP, "pending", "--limit", limit)
    assert (code, out) == (2, "")
    assert err.strip() == "machinery-aio: error: --limit must be 1 or more"


@pytest.mark.parametrize("limit", ["lots", "1.5"])
def test_a_limit_that_is_not_a_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    code, _, err = run(capsys, "inspect", "-A", APP, "pending", "--limit", limit)
    assert code == 2
    assert "usage: machinery-aio" in err
    assert "--limit: invalid int value" in err


def test_a_bogus_loglevel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "send", "-A", APP, "add", "1", "--loglevel", "bogus")
    assert code == 2
    assert "usage: machinery-aio" in err
    assert "--loglevel: invalid choice: 'BOGUS'" in err
    code, _, _ = run(capsys, "send", "-A", APP, "add", "1", "--loglevel", "warning")  # any case works
    assert code == 0


# -- a server that cannot be reached ------------------------------------------------------------------------


UNREACHABLE_COMMANDS = [
    ["send", "add", "1"],
    ["send", "add", "1", "--no-wait"],
    ["inspect", "pending"],
    ["inspect", "delayed"],  # RabbitMQ cannot list delayed tasks: refused before connecting
    ["inspect", "state", "task_x"],
    ["purge", "--yes"],
    ["worker"],
]


@pytest.mark.parametrize(
    ("package", "url"),
    [
        ("redis", "redis://:hunter2@127.0.0.1:{port}/0"),
        ("aio_pika", "amqp://guest:hunter2@127.0.0.1:{port}/"),
    ],
    ids=["redis", "amqp"],
)
def test_an_unreachable_server_is_one_line_naming_the_masked_url_for_every_command(
    package: str, url: str
) -> None:
    pytest.importorskip(package)
    port = free_port()
    url = url.format(port=port)
    masked = url.replace("hunter2", MASK)
    commands = [
        c for c in UNREACHABLE_COMMANDS if not (package == "aio_pika" and c == ["inspect", "delayed"])
    ]
    env = {**os.environ, "BROKER": url, "RESULT_BACKEND": url, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "machinery_aio", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        finished = [proc.communicate(timeout=90) for proc in procs]  # all at once: seconds each
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for command, proc, (out, err) in zip(commands, procs, finished, strict=True):
        where = f"{command}: {err}"
        assert proc.returncode == 1, where
        lines = err.strip().splitlines()
        if command == ["worker"]:  # its banner comes first; the lines after it count
            banner_end = max(i for i, line in enumerate(lines) if line.startswith("  tasks:"))
            lines = lines[banner_end + 1 :]
        assert 1 <= len(lines) <= 3, where
        assert "Traceback" not in err, where
        assert "hunter2" not in err + out, where
        [error] = [line for line in lines if line.startswith("machinery-aio: error: ")]
        assert f"cannot connect to the broker {masked}" in error, where


# -- held tasks (Redis): a task no worker knows is visible in inspect pending -----------------------------


async def test_a_task_no_worker_knows_shows_as_held(cli_process: StartCLI, unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    from machinery_aio.drivers.redis.connection import create_redis

    config = Config(
        broker=REDIS_URL,
        result_backend=REDIS_URL,
        default_queue=f"{unique}_q",
        results_expire_in=600,
    )
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    env = {
        "BROKER": REDIS_URL,
        "RESULT_BACKEND": REDIS_URL,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
    }
    worker = cli_process("worker", "-A", "tests.apps.redis_app:server", "--no-scheduler", env=env)
    server = Server(config)
    client = create_redis(REDIS_URL, config)
    try:
        worker.wait_for("consuming")
        unknown = Signature(uuid=f"task_{unique}_unknown", name="nobody_knows", args=[Arg.of(7)])
        await server.send_task(unknown)
        known = await server.send_task(Signature(uuid=f"task_{unique}_add", name="add", args=[Arg.of(2)]))
        assert await known.get(timeout=60) == 2  # the worker is up and took the queue's messages
        await eventually(lambda: server.broker.get_held_tasks(config.default_queue))
        command = [sys.executable, "-m", "machinery_aio", "inspect", "pending", "--loglevel", "ERROR"]
        for _ in range(5):  # the worker takes it back each time its hand-back delay ends: a moment
            inspected = await asyncio.to_thread(
                subprocess.run,
                command,
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert inspected.returncode == 0, inspected.stderr
            if '"held": true' in inspected.stdout:
                break
        [held] = json.loads(inspected.stdout)
        assert (held["uuid"], held["name"], held["args"], held["held"]) == (
            unknown.uuid,
            "nobody_knows",
            [7],
            True,
        )
        assert f"0 pending in '{config.default_queue}'" in inspected.stderr
        assert "1 taken by workers and not finished" in inspected.stderr
        assert (await server.get_async_result(unknown.uuid).get_state()).state is State.PENDING
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.finish, 60) == 0, worker.stderr
    finally:
        await server.close()
        keys = [key async for key in client.scan_iter(match=f"*{unique}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
