"""Go Machinery's RabbitMQ layout as pure functions, and AMQP URL and TLS settings (no server)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from machinery_aio import Config, ConfigError
from machinery_aio.config import AMQPConfig, TLSConfig
from machinery_aio.drivers import create_backend, create_broker
from machinery_aio.drivers.amqp.connection import check_url, ssl_context
from machinery_aio.drivers.amqp.layout import (
    amqp_headers,
    default_routing_key,
    delay_bucket,
    delay_queue,
    delayed_queue,
    own_headers,
    queue_binding_key,
    route,
)


def test_default_routing_key_follows_go() -> None:
    assert default_routing_key(AMQPConfig(), "machinery_tasks") == "machinery_tasks"
    go = AMQPConfig(binding_key="machinery_task")
    assert default_routing_key(go, "machinery_tasks") == "machinery_task"
    topic = AMQPConfig(exchange_type="topic", binding_key="tasks.#")
    assert default_routing_key(topic, "machinery_tasks") == "machinery_tasks"


def test_route_declares_the_routing_keys_queue_but_no_phantom() -> None:
    plain = route(AMQPConfig(), "machinery_tasks", "emails")
    assert (plain.queue, plain.binding_key, plain.routing_key) == ("emails", "emails", "emails")
    go = route(AMQPConfig(binding_key="machinery_task"), "machinery_tasks", "machinery_task")
    assert (go.queue, go.binding_key) == ("machinery_tasks", "machinery_task")
    topic = route(AMQPConfig(exchange_type="topic", binding_key="tasks.#"), "machinery_tasks", "x")
    assert (topic.queue, topic.binding_key, topic.routing_key) == ("machinery_tasks", "tasks.#", "x")


def test_consumer_binding_keys() -> None:
    assert queue_binding_key(AMQPConfig(), "machinery_tasks", "machinery_tasks") == ["machinery_tasks"]
    go = AMQPConfig(binding_key="machinery_task")
    assert queue_binding_key(go, "machinery_tasks", "machinery_tasks") == [
        "machinery_tasks",
        "machinery_task",
    ]
    assert queue_binding_key(go, "emails", "machinery_tasks") == ["emails"]
    assert queue_binding_key(AMQPConfig(exchange_type="topic", binding_key="t.#"), "q", "q") == ["t.#"]


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [
        (0, 0),
        (-5, 0),
        (7, 7),
        (99, 99),
        (100, 100),
        (101, 110),
        (999, 1000),
        (1000, 1000),
        (1001, 1100),
        (2999, 3000),
        (59_500, 60_000),
        (99_999, 100_000),
        (100_000, 100_000),
        (100_999, 100_000),
        (123_456, 120_000),
        (3_723_000, 3_700_000),
        (86_400_000, 86_000_000),
    ],
)
def test_delay_buckets(ms: int, bucket: int) -> None:
    assert delay_bucket(ms) == bucket


def test_delay_buckets_are_bounded_and_short_delays_never_early() -> None:
    buckets = {delay_bucket(ms) for ms in range(0, 1_000_000, 7)}
    assert len(buckets) <= 100 + 90 * 4
    for ms in range(1, 100_000, 13):
        assert 0 <= delay_bucket(ms) - ms < 1000  # at most 1 s late, never early
    for ms in range(100_000, 10_000_000, 997):
        assert 0 <= ms - delay_bucket(ms) < ms / 10  # under 10 % early; the worker re-delays


def test_delay_queue_is_gos() -> None:
    name, args = delay_queue(AMQPConfig(), 5000, "machinery_tasks")
    assert name == "delay.5000.machinery_exchange.machinery_tasks"
    assert args == {
        "x-dead-letter-exchange": "machinery_exchange",
        "x-dead-letter-routing-key": "machinery_tasks",
        "x-message-ttl": 5000,
        "x-expires": 10000,
    }


def test_delayed_queue_per_routing_key() -> None:
    amqp = AMQPConfig(delayed_queue="delayed")
    assert delayed_queue(amqp, "machinery_tasks", "machinery_tasks") == (
        "delayed",
        {"x-dead-letter-exchange": "machinery_exchange", "x-dead-letter-routing-key": "machinery_tasks"},
    )
    assert delayed_queue(amqp, "emails", "machinery_tasks")[0] == "delayed.emails"


def test_headers_become_strings() -> None:
    assert amqp_headers(None) is None
    assert amqp_headers({"a": "x", "n": 5, "f": 1.5, "b": False, "z": None, "m": {"k": [1]}}) == {
        "a": "x",
        "n": "5",
        "f": "1.5",
        "b": "false",
        "z": None,
        "m": '{"k":[1]}',
    }


def test_urls() -> None:
    assert check_url("amqp://guest:guest@localhost:5672/").host == "localhost"
    assert check_url("amqps://u:p@rabbit/vh").path == "/vh"
    with pytest.raises(ConfigError, match="not an AMQP URL") as caught:
        check_url("redis://user:hunter2@host/0")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="no host"):
        check_url("amqp:///vhost")


def test_factory_picks_the_amqp_classes() -> None:
    config = Config(broker="amqps://guest:guest@localhost/", result_backend="amqp://localhost/")
    assert type(create_broker(config)).__name__ == "AMQPBroker"
    assert type(create_backend(config)).__name__ == "AMQPBackend"


def test_tls_settings(tmp_path: Path) -> None:
    assert ssl_context(TLSConfig()) is None
    insecure = ssl_context(TLSConfig(insecure_skip_verify=True))
    assert insecure is not None
    assert insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname
    with pytest.raises(ConfigError, match="ca_file"):
        ssl_context(TLSConfig(ca_file=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="cert_file"):
        ssl_context(TLSConfig(key_file=__file__))
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no usable CA certificate"):
        ssl_context(TLSConfig(ca_file=str(bad)))
    with pytest.raises(ConfigError, match="usable certificate and key"):
        ssl_context(TLSConfig(cert_file=str(bad)))


def test_copies_leave_out_the_headers_dead_lettering_added() -> None:
    headers = {
        "trace": "abc",
        "x-death": [{"count": 1}],
        "x-first-death-queue": "q.handback",
        "x-first-death-reason": "expired",
        "x-last-death-exchange": "",
    }
    assert own_headers(headers) == {"trace": "abc"}
    assert own_headers(None) == {}
