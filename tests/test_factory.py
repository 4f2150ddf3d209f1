"""One factory picks broker, backend and lock by URL scheme; drivers are imported lazily."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from machinery_aio import Config, ConfigError, MissingExtraError, Server
from machinery_aio.drivers import create_backend, create_broker, create_lock, lock_url
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.drivers.memory.lock import MemoryLock
from machinery_aio.drivers.null.backend import NullBackend

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("url", ["memory://", "memory://jobs", "MEMORY://x", "memory"])
def test_memory_scheme_gives_the_embedded_implementations(url: str) -> None:
    config = Config(broker=url, result_backend=url, lock=url)
    broker, backend, lock = create_broker(config), create_backend(config), create_lock(config)
    assert isinstance(broker, MemoryBroker)
    assert broker.url == url
    assert isinstance(backend, MemoryBackend)
    assert backend.url == url
    assert isinstance(lock, MemoryLock)
    assert lock.url == url


def test_null_backend() -> None:
    backend = create_backend(Config(result_backend="null://"))
    assert isinstance(backend, NullBackend)
    assert backend.capabilities.stores_results is False
    assert not hasattr(backend, "stores_results")  # a capability, not a per-object flag
    assert isinstance(create_backend(Config(result_backend="null")), NullBackend)


def test_config_without_urls_uses_memory_everywhere() -> None:
    server = Server(Config())
    assert isinstance(server.broker, MemoryBroker)
    assert isinstance(server.backend, MemoryBackend)
    assert isinstance(server.lock, MemoryLock)
    assert isinstance(Server().broker, MemoryBroker)


def test_injected_objects_are_used_as_given() -> None:
    config = Config(broker="amqp://user:pw@nowhere/", result_backend="mongodb://nowhere")
    broker = MemoryBroker(config, "memory://injected")
    backend = MemoryBackend(config, "memory://injected")
    lock = MemoryLock(config, "memory://injected")
    server = Server(config, broker=broker, backend=backend, lock=lock)
    assert (server.broker, server.backend, server.lock) == (broker, backend, lock)


def test_explicit_url_wins_over_the_config() -> None:
    config = Config(broker="memory://a", result_backend="memory://a")
    assert create_broker(config, "memory://b").url == "memory://b"
    assert create_backend(config, "null://").url == "null://"


def test_first_of_several_brokers_is_used() -> None:
    config = Config(broker="memory://first,memory://second", multiple_broker_separator=",")
    assert create_broker(config).url == "memory://first"


@pytest.mark.parametrize(
    ("make", "url", "kind"),
    [
        (create_broker, "kafka://user:hunter2@host:9092", "broker"),
        (create_backend, "cassandra://user:hunter2@host", "result backend"),
        (create_lock, "zookeeper://user:hunter2@host", "lock"),
        (create_broker, "null://", "broker"),
        (create_broker, "memcache://host:11211", "broker"),
        (create_lock, "amqp://user:hunter2@host/", "lock"),
        (create_lock, "memcache://host:11211", "lock"),
        (create_broker, "mongodb://user:hunter2@host:27017", "broker"),
    ],
)
def test_unknown_scheme_is_a_clear_error_without_the_password(make: object, url: str, kind: str) -> None:
    scheme = url.split("://")[0]
    with pytest.raises(ConfigError) as info:
        make(Config(), url)  # type: ignore[operator]
    message = str(info.value)
    assert f"unknown {kind} URL scheme {scheme!r}" in message
    assert "known schemes:" in message
    assert "memory://" in message
    assert "hunter2" not in message
    assert "not available" not in message
    assert "pip install" not in message


def test_memcache_and_mongodb_urls_make_their_backends_without_connecting() -> None:
    from machinery_aio.drivers.memcache.backend import MemcacheBackend
    from machinery_aio.drivers.mongo.backend import MongoBackend

    assert isinstance(create_backend(Config(), "memcache://h1:11211,h2:11211"), MemcacheBackend)
    assert isinstance(create_backend(Config(), "mongodb://user:hunter2@host:27017/db"), MongoBackend)
    assert isinstance(create_backend(Config(), "mongodb+srv://user:hunter2@cluster.example/db"), MongoBackend)


def test_url_without_scheme_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown broker URL scheme .* in 'localhost:6379'; known schemes"):
        create_broker(Config(), "localhost:6379")


def test_https_urls_are_told_apart_by_service() -> None:
    assert type(create_broker(Config(), "https://sqs.us-east-1.amazonaws.com/123456789012/")).__name__ == (
        "SQSBroker"
    )
    assert type(create_backend(Config(), "https://dynamodb.eu-west-1.amazonaws.com")).__name__ == (
        "DynamoDBBackend"
    )
    # a VPC endpoint or LocalStack host names the service by one of its labels
    vpce = "https://vpce-0a1b.sqs.us-east-1.vpce.amazonaws.com/123456789012/"
    assert type(create_broker(Config(), vpce)).__name__ == "SQSBroker"
    with pytest.raises(ConfigError, match=r"result backend URL .*dynamodb\.<region>\.amazonaws\.com"):
        create_backend(Config(), "https://sqs.us-east-1.amazonaws.com/123")
    with pytest.raises(ConfigError, match=r"https broker URL must name its service by host .*sqs\.<region>"):
        create_broker(Config(), "https://dynamodb.us-east-1.amazonaws.com")
    with pytest.raises(ConfigError, match=r"unknown broker URL scheme 'https' for host 'example\.com'"):
        create_broker(Config(), "https://user:hunter2@example.com/queue")
    with pytest.raises(ConfigError) as info:
        create_broker(Config(), "https://user:hunter2@example.com/queue")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown lock URL scheme 'https'"):
        create_lock(Config(), "https://sqs.us-east-1.amazonaws.com/123")


def test_lock_url_follows_a_redis_backend_or_broker() -> None:
    assert lock_url(Config(lock="redis://locks:6379/6")) == "redis://locks:6379/6"
    assert lock_url(Config(result_backend="redis://r:6379/6")) == "redis://r:6379/6"
    assert lock_url(Config(broker="rediss://b:6379/6", result_backend="null://")) == "rediss://b:6379/6"
    assert lock_url(Config(broker="amqp://x/", result_backend="mongodb://m")) == "memory://"
    assert lock_url(Config()) == "memory://"


def test_server_with_an_unknown_scheme_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="unknown broker URL scheme 'nats'"):
        Server(Config(broker="nats://host"))


# -- missing extras: run in a fresh interpreter where the driver package cannot be imported --

_BLOCKED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    BLOCKED = {blocked!r}
    for name in BLOCKED:
        sys.modules[name] = None  # Python's own import blocker: "import name" now fails
    from machinery_aio import Config, MissingExtraError
    from machinery_aio.drivers import create_backend, create_broker, create_lock
    out = []
    for kind, url in {cases!r}:
        make = {{"broker": create_broker, "backend": create_backend, "lock": create_lock}}[kind]
        try:
            make(Config(), url)
        except MissingExtraError as exc:
            out.append(["MissingExtraError", str(exc), isinstance(exc, ImportError)])
        except Exception as exc:
            out.append([type(exc).__name__, str(exc), False])
        else:
            out.append(["ok", "", False])
    print(json.dumps(out))
    """
)

MISSING = [
    ("broker", "redis://:hunter2@127.0.0.1:6379/6", "redis", "redis"),
    ("backend", "rediss://user:hunter2@127.0.0.1:6379/6", "redis", "redis"),
    ("lock", "redis+socket:///tmp/redis.sock", "redis", "redis"),
    ("broker", "amqp://guest:hunter2@127.0.0.1:5672/", "aio_pika", "amqp"),
    ("backend", "amqps://guest:hunter2@127.0.0.1:5671/", "aio_pika", "amqp"),
]


def test_missing_extra_names_the_extra_to_install() -> None:
    blocked = sorted({package for _, _, package, _ in MISSING})
    cases = [(kind, url) for kind, url, _, _ in MISSING]
    script = _BLOCKED_SCRIPT.format(blocked=blocked, cases=cases)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for (kind, url, package, extra), (error, message, is_import_error) in zip(MISSING, results, strict=True):
        assert error == "MissingExtraError", (url, error, message)
        assert is_import_error
        assert f"pip install 'machinery-aio[{extra}]'" in message
        assert repr(package) in message
        assert "hunter2" not in message
        assert ("result backend" if kind == "backend" else kind) in message


def test_memory_and_null_need_no_extra() -> None:
    """With every optional driver blocked, the core still builds its embedded implementations."""
    blocked = ["redis", "aio_pika", "yaml", "uvloop"]
    cases = [("broker", "memory://"), ("backend", "memory://"), ("backend", "null://"), ("lock", "memory://")]
    script = _BLOCKED_SCRIPT.format(blocked=blocked, cases=cases)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in json.loads(proc.stdout)] == ["ok"] * 4


def test_missing_extra_error_is_public() -> None:
    assert issubclass(MissingExtraError, ImportError)
