"""No password reaches a log line: URL masking and the logging filter."""

from __future__ import annotations

import logging

import pytest

from machinery_aio.log import get_logger
from machinery_aio.urls import MASK, host_of, mask_secrets, mask_url, scheme_of


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:6379/0", f"redis://:{MASK}@h:6379/0"),
        ("redis://user:pw@h", f"redis://user:{MASK}@h"),
        ("redis://pw@h", f"redis://{MASK}@h"),  # Go reads a bare userinfo as the password
        ("redis+socket://pw@/tmp/redis.sock", f"redis+socket://{MASK}@/tmp/redis.sock"),
        ("rediss://u:p@a:1,b:2/0", f"rediss://u:{MASK}@a:1,b:2/0"),
        ("amqp://guest:guest@h:5672/", f"amqp://guest:{MASK}@h:5672/"),
        ("amqp://user@h/", "amqp://user@h/"),  # a user name alone is not a secret
        ("mongodb://u:p%40ss@h1,h2/db?authSource=admin", f"mongodb://u:{MASK}@h1,h2/db?authSource=admin"),
        ("redis://:p@ss@host:6379/6", f"redis://:{MASK}@host:6379/6"),  # an unescaped @ in it
        ("amqp://u:p@h/?x=a@b", f"amqp://u:{MASK}@h/?x=a@b"),
        ("https://sqs.x/?aws_secret_access_key=abc&x=1", f"https://sqs.x/?aws_secret_access_key={MASK}&x=1"),
        ("amqps://u:p@h/v?password=zz", f"amqps://u:{MASK}@h/v?password={MASK}"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_secrets_in_free_text() -> None:
    text = "lost redis://:s3cret@r1:6379/6, retrying amqp://guest:hunter2@rabbit/ now"
    masked = mask_secrets(text)
    assert "s3cret" not in masked
    assert "hunter2" not in masked
    assert masked == f"lost redis://:{MASK}@r1:6379/6, retrying amqp://guest:{MASK}@rabbit/ now"
    assert mask_secrets("write to bob@example.com") == "write to bob@example.com"


def test_host_of() -> None:
    assert host_of("https://SQS.us-east-1.amazonaws.com/123456789012/") == "sqs.us-east-1.amazonaws.com"
    assert (
        host_of("https://user:pw@dynamodb.eu-west-1.amazonaws.com:443") == "dynamodb.eu-west-1.amazonaws.com"
    )
    assert host_of("http://[::1]:4566/000000000000/") == "::1"
    assert host_of("localhost:6379") == ""


def test_scheme_of() -> None:
    assert scheme_of("REDIS://h") == "redis"
    assert scheme_of("redis+socket:///x") == "redis+socket"
    assert scheme_of("localhost:6379") == ""


def test_logger_masks_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("machinery_aio.test_urls")
    assert get_logger("machinery_aio.test_urls").filters == logger.filters  # added once
    with caplog.at_level(logging.INFO, "machinery_aio.test_urls"):
        logger.info("connecting to %s", "redis://:hunter2@redis:6379/6")
        logger.info("direct amqp://guest:hunter2@rabbit/")
        try:
            raise ConnectionError("cannot reach amqp://guest:hunter2@rabbit/")
        except ConnectionError:
            logger.exception("failed")
    assert "hunter2" not in caplog.text
    assert f"redis://:{MASK}@redis:6379/6" in caplog.text
    assert caplog.text.count(MASK) == 4  # the traceback shows the raising line too
