"""Config from code, from Go Machinery's environment variables, and from Go's config.yml."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from machinery_aio import Config, ConfigError
from tests.conftest import DATA

GO_YAML = DATA / "go_config.yml"


def test_defaults_use_the_embedded_memory_broker_and_gos_values() -> None:
    config = Config()
    assert (config.broker, config.result_backend) == ("memory://", "memory://")
    assert config.default_queue == "machinery_tasks"
    assert config.results_expire_in == 3600
    assert config.amqp.exchange == "machinery_exchange"
    assert config.amqp.exchange_type == "direct"
    assert config.amqp.prefetch_count == 3
    assert config.redis.max_idle == 3
    assert config.redis.idle_timeout == 240
    assert config.redis.normal_tasks_poll_period == 1000
    assert config.redis.delayed_tasks_poll_period == 500
    assert config.redis.delayed_tasks_key == "delayed_tasks"
    assert config.broker_urls() == ["memory://"]
    assert not config.reloads


def test_unknown_fields_and_bad_values_in_code_are_refused() -> None:
    with pytest.raises(ValueError, match="brokr"):
        Config(brokr="redis://")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="results_expire_in"):
        Config(results_expire_in=-1)
    config = Config()
    with pytest.raises(ValueError, match="prefetch_count"):
        config.amqp.prefetch_count = -5


def test_multiple_brokers_split_by_the_separator() -> None:
    config = Config(broker="amqp://a/, amqp://b/,", multiple_broker_separator=",")
    assert config.broker_urls() == ["amqp://a/", "amqp://b/"]
    assert Config(broker="amqp://a/,amqp://b/").broker_urls() == ["amqp://a/,amqp://b/"]


# -- environment -------------------------------------------------------------------------


GO_ENV = {
    "BROKER": "amqp://guest:guest@rabbit:5672/;amqp://guest:guest@rabbit2:5672/",
    "LOCK": "eager",
    "MULTIPLE_BROKEN_SEPARATOR": ";",  # Go's spelling
    "DEFAULT_QUEUE": "jobs",
    "RESULT_BACKEND": "redis://127.0.0.1:6379/6",
    "RESULTS_EXPIRE_IN": "60",
    "NO_UNIX_SIGNALS": "true",
    "AMQP_EXCHANGE": "ex",
    "AMQP_EXCHANGE_TYPE": "topic",
    "AMQP_QUEUE_DECLARE_ARGS": "x-max-priority:10,x-queue-type:quorum",
    "AMQP_QUEUE_BINDING_ARGS": "image-type:png, x-match:any",
    "AMQP_BINDING_KEY": "jobs",
    "AMQP_PREFETCH_COUNT": "8",
    "AMQP_AUTO_DELETE": "1",
    "AMQP_DELAYED_QUEUE": "delayed",
    "REDIS_MAX_IDLE": "5",
    "REDIS_MAX_ACTIVE": "20",
    "REDIS_IDLE_TIMEOUT": "100",
    "REDIS_WAIT": "f",
    "REDIS_READ_TIMEOUT": "1",
    "REDIS_WRITE_TIMEOUT": "2",
    "REDIS_CONNECT_TIMEOUT": "3",
    "REDIS_NORMAL_TASKS_POLL_PERIOD": "400",
    "REDIS_DELAYED_TASKS_POLL_PERIOD": "50",
    "REDIS_DELAYED_TASKS_KEY": "dt",
    "REDIS_CLIENT_NAME": "me",
    "REDIS_MASTER_NAME": "master",
    "REDIS_CLUSTER_ENABLED": "true",
    "REDIS_SENTINEL_PASSWORD": "pw",
}


def test_go_environment_variables_load() -> None:
    config = Config.from_env(environ=GO_ENV)
    assert config.broker_urls() == ["amqp://guest:guest@rabbit:5672/", "amqp://guest:guest@rabbit2:5672/"]
    assert config.lock == "eager"
    assert config.multiple_broker_separator == ";"
    assert config.default_queue == "jobs"
    assert config.result_backend == "redis://127.0.0.1:6379/6"
    assert config.results_expire_in == 60
    assert config.no_unix_signals is True
    amqp = config.amqp
    assert (amqp.exchange, amqp.exchange_type, amqp.binding_key) == ("ex", "topic", "jobs")
    assert amqp.queue_declare_args == {"x-max-priority": 10, "x-queue-type": "quorum"}
    assert amqp.queue_binding_args == {"image-type": "png", "x-match": "any"}
    assert (amqp.prefetch_count, amqp.auto_delete, amqp.delayed_queue) == (8, True, "delayed")
    redis = config.redis
    assert (redis.max_idle, redis.max_active, redis.idle_timeout, redis.wait) == (5, 20, 100, False)
    assert (redis.read_timeout, redis.write_timeout, redis.connect_timeout) == (1, 2, 3)
    assert (redis.normal_tasks_poll_period, redis.delayed_tasks_poll_period) == (400, 50)
    assert (redis.delayed_tasks_key, redis.client_name, redis.master_name) == ("dt", "me", "master")
    assert redis.cluster_enabled is True
    assert redis.sentinel_password == "pw"


def test_sqs_and_dynamodb_variables_are_gos_names() -> None:
    config = Config.from_env(
        environ={
            "SQS_WAIT_TIME_SECONDS": "5",
            "SQS_VISIBILITY_TIMEOUT": "45",
            "SQS_VISIBILITY_HEARTBEAT": "false",
            "TASK_STATES_TABLE": "states",
            "DYNAMODB_GROUP_METAS_TABLE": "metas",  # envconfig's prefixed form
        }
    )
    assert (config.sqs.wait_time_seconds, config.sqs.visibility_timeout) == (5, 45)
    assert config.sqs.visibility_heartbeat is False
    assert (config.dynamodb.task_states_table, config.dynamodb.group_metas_table) == ("states", "metas")
    defaults = Config()
    assert (defaults.sqs.wait_time_seconds, defaults.sqs.visibility_heartbeat) == (20, True)
    assert (defaults.dynamodb.task_states_table, defaults.dynamodb.group_metas_table) == (
        "task_states",
        "group_metas",
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SQS_WAIT_TIME_SECONDS", "not a number", r"SQS_WAIT_TIME_SECONDS: 'not a number' is not an integer"),
        ("SQS_WAIT_TIME_SECONDS", "21", r"sqs\.wait_time_seconds: Input should be less than or equal to 20"),
        (
            "SQS_VISIBILITY_TIMEOUT",
            "0",
            r"sqs\.visibility_timeout: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_sqs_variables_are_clear_errors(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        Config.from_env(environ={name: value})


def test_the_mongodb_database_comes_from_mongodb_database() -> None:
    assert Config().mongodb.database == ""  # the URL's database, else Go's "machinery"
    assert Config.from_env(environ={"MONGODB_DATABASE": "results"}).mongodb.database == "results"


def test_envconfig_struct_prefixed_names_win_as_in_go() -> None:
    config = Config.from_env(
        environ={
            "AMQP_EXCHANGE": "plain",
            "AMQP_AMQP_EXCHANGE": "prefixed",
            "REDIS_REDIS_MAX_IDLE": "9",
            "REDIS_MAX_IDLE": "2",
        }
    )
    assert config.amqp.exchange == "prefixed"
    assert config.redis.max_idle == 9


def test_correctly_spelled_separator_works_too() -> None:
    config = Config.from_env(environ={"MULTIPLE_BROKER_SEPARATOR": "|", "BROKER": "amqp://a/|amqp://b/"})
    assert config.broker_urls() == ["amqp://a/", "amqp://b/"]


def test_prefix_and_overrides() -> None:
    env = {"MYAPP_BROKER": "memory://x", "BROKER": "amqp://ignored/", "MYAPP_REDIS_MAX_IDLE": "7"}
    config = Config.from_env("MYAPP_", environ=env, default_queue="from-code")
    assert config.broker == "memory://x"
    assert config.redis.max_idle == 7
    assert config.default_queue == "from-code"


def test_unset_variables_keep_defaults_and_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MACHINERY_TEST_DEFAULT_QUEUE", "from-os")
    config = Config.from_env("MACHINERY_TEST_")
    assert config.default_queue == "from-os"
    assert config.broker == "memory://"
    assert Config.from_env(environ={}) == Config()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_MAX_IDLE": "three"}, "environment variable REDIS_MAX_IDLE: 'three' is not an integer"),
        ({"NO_UNIX_SIGNALS": "maybe"}, "NO_UNIX_SIGNALS: 'maybe' is not a boolean"),
        ({"AMQP_QUEUE_DECLARE_ARGS": "x-max-priority"}, "'x-max-priority' is not key:value"),
        ({"RESULTS_EXPIRE_IN": "-5"}, "results_expire_in"),
        ({"REDIS_NORMAL_TASKS_POLL_PERIOD": "-1"}, "redis.normal_tasks_poll_period"),
        ({"AMQP_PREFETCH_COUNT": "1.5"}, "AMQP_PREFETCH_COUNT"),
    ],
)
def test_bad_environment_values_raise_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config.from_env(environ=env)


def test_prefixed_bad_value_names_the_prefixed_variable() -> None:
    with pytest.raises(ConfigError, match="APP_REDIS_WAIT"):
        Config.from_env("APP_", environ={"APP_REDIS_WAIT": "perhaps"})


def test_map_values_keep_colons_and_types() -> None:
    config = Config.from_env(
        environ={
            "AMQP_QUEUE_DECLARE_ARGS": "x-dead-letter-exchange:amq.direct:x, x-message-ttl:60000,flag:true",
        }
    )
    assert config.amqp.queue_declare_args == {
        "x-dead-letter-exchange": "amq.direct:x",
        "x-message-ttl": 60000,
        "flag": True,
    }


# -- YAML ----------------------------------------------------------------------------------


def test_go_config_yml_loads_unchanged_beyond_1000_bytes(caplog: pytest.LogCaptureFixture) -> None:
    assert GO_YAML.stat().st_size > 1000
    with caplog.at_level(logging.WARNING, "machinery_aio.config"):
        config = Config.from_yaml(GO_YAML)
    assert config.broker == "amqp://guest:s3cret@rabbit.internal:5672/"
    assert config.lock == "eager"
    assert config.multiple_broker_separator == ","
    assert config.result_backend == "redis://:r3dis-pass@redis.internal:6379/3"
    assert config.results_expire_in == 7200
    amqp = config.amqp
    assert (amqp.exchange, amqp.exchange_type, amqp.binding_key) == (
        "machinery_exchange",
        "direct",
        "machinery_tasks",
    )
    assert (amqp.prefetch_count, amqp.auto_delete, amqp.delayed_queue) == (7, True, "delay_queue")
    assert amqp.queue_declare_args == {"x-max-priority": 10, "x-queue-mode": "lazy"}
    assert amqp.queue_binding_args == {"image-type": "png", "x-match": "any"}
    redis = config.redis
    assert redis.idle_timeout == 120  # from max_idle_timeout
    assert (redis.max_idle, redis.max_active, redis.wait) == (4, 50, False)
    assert (redis.read_timeout, redis.write_timeout, redis.connect_timeout) == (11, 12, 13)
    assert (redis.normal_tasks_poll_period, redis.delayed_tasks_poll_period) == (900, 250)
    assert (redis.delayed_tasks_key, redis.client_name) == ("my_delayed_tasks", "billing-worker")
    assert (redis.master_name, redis.sentinel_password) == ("mymaster", "sentinel-pass")
    assert config.no_unix_signals is True  # past byte 1000, where Go's reader stops
    sqs = config.sqs  # Go's key names, "hearth" included
    assert (sqs.wait_time_seconds, sqs.visibility_timeout, sqs.visibility_heartbeat) == (5, 45, False)
    dynamodb = config.dynamodb
    assert (dynamodb.task_states_table, dynamodb.group_metas_table) == (
        "billing_task_states",
        "billing_group_metas",
    )
    # the sections of drivers this version does not have are named, once, and ignored
    [warning] = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert "ignoring unknown settings gcppubsub_subscription" in warning
    assert not config.reloads


def test_python_spellings_load_from_yaml_too(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("redis:\n  idle_timeout: 9\n  normal_tasks_poll_period: 20\namqp:\n  prefetch_count: 2\n")
    config = Config.from_yaml(path)
    assert (config.redis.idle_timeout, config.redis.normal_tasks_poll_period) == (9, 20)
    assert config.amqp.prefetch_count == 2


def test_unknown_sections_load_with_a_warning_even_when_their_values_are_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.yml"
    path.write_text("default_queue: q\nmongodb:\n  database: x\ngcppubsub: 5\n")
    with caplog.at_level(logging.WARNING, "machinery_aio.config"):
        config = Config.from_yaml(path)
    assert config.default_queue == "q"
    assert config.mongodb.database == "x"
    assert f"{path}: ignoring unknown settings gcppubsub" in caplog.text


def test_a_bad_sqs_value_in_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("sqs:\n  receive_wait_time_seconds: 99\n")
    with pytest.raises(
        ConfigError, match=r"sqs\.receive_wait_time_seconds: Input should be less than or equal to 20"
    ):
        Config.from_yaml(path)


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("# nothing\n")
    assert Config.from_yaml(path) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("results_expire_in: soon\n", "results_expire_in"),
        ("redis:\n  max_idle: -1\n", "redis.max_idle"),
        (
            "redis:\n  delayed_tasks_poll_period: -3\n",
            "redis.delayed_tasks_poll_period: Input should be greater than or equal to 0",
        ),
        ("- just\n- a list\n", "must hold a mapping of settings, not list"),
        ("broker: [unclosed\n", "is not valid YAML"),
        ("amqp: 5\n", "amqp"),
    ],
)
def test_bad_yaml_raises_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        Config.from_yaml(path)
    assert str(path) in str(info.value)


def test_missing_yaml_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        Config.from_yaml(tmp_path / "nope.yml")


# -- live reload --------------------------------------------------------------------------


def test_reload_updates_the_same_object_in_place(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    shutil.copy(GO_YAML, path)
    config = Config.from_yaml(path, keep_reloading=True)
    redis = config.redis
    assert config.reloads
    assert config.reload() is False  # nothing changed
    path.write_text(
        GO_YAML.read_text().replace("normal_tasks_poll_period: 900", "normal_tasks_poll_period: 300")
    )
    assert config.reload() is True
    assert config.redis.normal_tasks_poll_period == 300
    assert config.default_queue == "machinery_tasks"
    assert redis.normal_tasks_poll_period == 900  # sections are replaced, not mutated
    assert Config().reload() is False


async def test_keep_reloading_applies_changes_and_survives_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("default_queue: first\n")
    config = Config.from_yaml(path, keep_reloading=True)
    task = asyncio.create_task(config.keep_reloading(interval=0.01))
    try:
        path.write_text("default_queue: second\n")
        async with asyncio.timeout(10):
            while config.default_queue != "second":
                await asyncio.sleep(0.01)
        with caplog.at_level(logging.ERROR, "machinery_aio.config"):
            path.write_text("results_expire_in: never\n")
            async with asyncio.timeout(10):
                while "reload failed" not in caplog.text:
                    await asyncio.sleep(0.01)
        assert config.default_queue == "second"  # the old values stay
        assert config.results_expire_in == 3600
        path.write_text("default_queue: third\n")
        async with asyncio.timeout(10):
            while config.default_queue != "third":
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


def test_yaml_without_pyyaml_names_the_extra() -> None:
    script = (
        "import sys; sys.modules['yaml'] = None\n"
        "from machinery_aio import Config, ConfigError\n"
        f"try:\n    Config.from_yaml({str(GO_YAML)!r})\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "loading YAML needs PyYAML: pip install 'machinery-aio[yaml]'" in proc.stdout


# -- Pub/Sub --------------------------------------------------------------------------------


def test_gcp_pubsub_settings_load_from_environment_and_yaml(tmp_path: Path) -> None:
    env = {
        "GCP_PUBSUB_MAX_EXTENSION": "120.5",
        "GCP_PUBSUB_ACK_DEADLINE": "30",
        "GCP_PUBSUB_ORDERING": "true",
        "GCP_PUBSUB_DEAD_LETTER_MAX_ATTEMPTS": "7",
    }
    settings = Config.from_env(environ=env).gcp_pubsub
    assert (settings.max_extension, settings.ack_deadline, settings.ordering) == (120.5, 30, True)
    assert settings.dead_letter_max_attempts == 7
    path = tmp_path / "c.yml"
    path.write_text("gcp_pubsub:\n  ack_deadline: 20\n  ordering: true\n")
    settings = Config.from_yaml(path).gcp_pubsub
    assert (settings.ack_deadline, settings.ordering, settings.dead_letter_max_attempts) == (20, True, 0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dead_letter_max_attempts": 3}, "Pub/Sub accepts 5 to 100 delivery attempts"),
        ({"ack_deadline": 5}, "ack_deadline"),
        ({"ack_deadline": 601}, "ack_deadline"),
    ],
)
def test_bad_gcp_pubsub_settings_are_refused(settings: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(gcp_pubsub=settings)  # type: ignore[arg-type]
