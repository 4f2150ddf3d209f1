"""What is particular to SQS: queue URLs by name, Go's message bodies, ETAs (rounded up, longer
than 15 minutes, on FIFO queues), the 256 KiB limit, FIFO IDs, the visibility heartbeat."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from machinery_aio import Arg, Config, ConfigError, Signature
from machinery_aio.drivers import create_broker
from machinery_aio.drivers.aws.broker import SQSBroker
from machinery_aio.drivers.aws.messages import MessageTooLargeError, message_entry
from machinery_aio.drivers.broker import Delivery
from tests.support.aws import SQS_URL
from tests.support.drivers import eventually


def task(n: int, unique: str, **fields: Any) -> Signature:
    fields.setdefault("args", [Arg.of(n)])
    return Signature(uuid=f"task_{unique}_{n}", name="add", **fields)


async def connected(config: Config, **sqs: Any) -> SQSBroker:
    config = config.model_copy(deep=True)
    for key, value in sqs.items():
        setattr(config.sqs, key, value)
    broker = create_broker(config)
    assert isinstance(broker, SQSBroker)
    await broker.connect()
    return broker


async def receive_raw(sqs: Any, queue: str) -> list[dict[str, Any]]:
    url = (await sqs.get_queue_url(QueueName=queue))["QueueUrl"]
    response = await sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


@pytest.mark.parametrize("url", [SQS_URL, SQS_URL.rstrip("/")], ids=["slash", "no-slash"])
async def test_the_queue_is_the_routing_key_and_the_body_gos_signature_json(
    aws_config: Config, sqs: Any, unique: str, url: str
) -> None:
    aws_config.broker = url
    broker = await connected(aws_config)
    try:
        sig = task(1, unique)
        await broker.publish(sig)
        other = task(2, unique, routing_key=f"{unique}_other")
        await broker.publish(other)
        [message] = await receive_raw(sqs, aws_config.default_queue)
        assert message["Body"].encode() == sig.to_json()
        assert list(json.loads(message["Body"]))[:3] == ["UUID", "Name", "RoutingKey"]
        assert "MessageAttributes" not in message  # as Go: none
        [routed] = await receive_raw(sqs, f"{unique}_other")
        assert routed["Body"].encode() == other.to_json()
    finally:
        await broker.close()


async def test_an_existing_queue_is_used_as_it_is_and_a_missing_one_is_a_clear_error_when_creation_is_off(
    aws_config: Config, sqs: Any, unique: str
) -> None:
    made = await sqs.create_queue(QueueName=aws_config.default_queue, Attributes={"VisibilityTimeout": "77"})
    broker = await connected(aws_config, create_queues=False)
    try:
        await broker.publish(task(1, unique))
        attributes = await sqs.get_queue_attributes(QueueUrl=made["QueueUrl"], AttributeNames=["All"])
        assert attributes["Attributes"]["VisibilityTimeout"] == "77"
        assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "1"
        with pytest.raises(ConfigError, match=rf"SQS queue '{unique}_missing' does not exist"):
            await broker.publish(task(2, unique, routing_key=f"{unique}_missing"))
        assert await broker.count_pending(f"{unique}_missing") == 0
    finally:
        await broker.close()


def test_delays_are_rounded_up_and_capped_at_15_minutes() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    assert message_entry(Signature(name="a", eta=soon), "q")["DelaySeconds"] == 2  # Go: 1 (early)
    later = datetime.now(UTC) + timedelta(hours=3)
    assert message_entry(Signature(name="a", eta=later), "q")["DelaySeconds"] == 900
    past = datetime.now(UTC) - timedelta(seconds=5)
    assert "DelaySeconds" not in message_entry(Signature(name="a", eta=past), "q")
    assert "DelaySeconds" not in message_entry(Signature(name="a", eta=soon), "q.fifo")  # FIFO: no delays


async def test_a_message_that_arrives_before_its_eta_is_hidden_until_then(
    aws_config: Config, sqs: Any, unique: str
) -> None:
    """What a hop of an ETA over 15 minutes (or a FIFO queue, or a Go sender's rounding down)
    looks like to a consumer: it is not handed out before its ETA."""
    broker = await connected(aws_config)
    try:
        url = await broker.queues.url(aws_config.default_queue)
        eta = datetime.now(UTC) + timedelta(seconds=2)
        early = task(1, unique, eta=eta)
        await sqs.send_message(QueueUrl=url, MessageBody=early.to_json().decode())  # no DelaySeconds
        consumer = broker.consumer(aws_config.default_queue, prefetch=5, tag="t")
        got: list[Delivery] = []
        async with asyncio.timeout(30):
            while not got:
                got = await consumer.fetch(5)
        assert datetime.now(UTC) >= eta - timedelta(seconds=0.05)
        assert [d.body for d in got] == [early.to_json()]
        await consumer.ack(got[0])
        await consumer.close()
    finally:
        await broker.close()


async def test_a_message_over_256_kib_is_refused_at_send_time_and_nothing_is_sent(
    aws_config: Config, unique: str
) -> None:
    broker = await connected(aws_config)
    try:
        big = task(1, unique, args=[Arg.of("x" * 262_144)])
        with pytest.raises(
            MessageTooLargeError, match=rf"task add {big.uuid} is \d+ bytes, over SQS's limit"
        ):
            await broker.publish(big)
        with pytest.raises(MessageTooLargeError):
            await broker.publish_many([task(2, unique), big])
        assert await broker.count_pending() == 0
        # batches are split to stay under the limit per call
        halves = [task(n, unique, args=[Arg.of("y" * 100_000)]) for n in range(3, 8)]
        await broker.publish_many(halves)
        assert await broker.count_pending() == 5
    finally:
        await broker.close()


async def test_fifo_queues_get_a_group_id_and_a_deduplication_id(
    aws_config: Config, sqs: Any, unique: str
) -> None:
    broker = await connected(aws_config)
    queue = f"{unique}_f.fifo"
    try:
        grouped = task(1, unique, routing_key=queue, broker_message_group_id="tenant-7")
        plain = task(2, unique, routing_key=queue)
        await broker.publish(grouped)
        await broker.publish(plain)
        await broker.publish(plain)  # the same message again: deduplicated
        messages = await receive_raw(sqs, queue)
        assert [m["Body"].encode() for m in messages] == [grouped.to_json(), plain.to_json()]
        assert [m["Attributes"]["MessageGroupId"] for m in messages] == ["tenant-7", plain.uuid]
        assert all(m["Attributes"]["MessageDeduplicationId"].startswith(f"task_{unique}_") for m in messages)
        # a retry of the same task (same UUID, new body) is not taken for a duplicate
        retried = plain.model_copy(update={"retry_count": 1})
        await broker.publish(retried)
        assert await broker.count_pending(queue) == 1  # the two received ones are in flight
    finally:
        await broker.close()


@pytest.mark.parametrize("heartbeat", [True, False], ids=["heartbeat", "no-heartbeat"])
async def test_the_visibility_heartbeat_keeps_a_running_tasks_message_hidden(
    aws_config: Config, unique: str, heartbeat: bool
) -> None:
    holder = await connected(aws_config, visibility_timeout=2, visibility_heartbeat=heartbeat)
    other = await connected(aws_config, visibility_timeout=2)
    try:
        sig = task(1, unique)
        await holder.publish(sig)
        mine = holder.consumer(aws_config.default_queue, prefetch=1, tag="holder")
        [held] = await eventually(lambda: mine.fetch(1), "the message")
        theirs = other.consumer(aws_config.default_queue, prefetch=1, tag="other")
        seen: list[Delivery] = []
        for _ in range(3):  # about 3 s, each a 1 s long poll: over the visibility timeout
            seen += await theirs.fetch(1)
        if heartbeat:
            assert seen == []
        else:
            assert [d.body for d in seen] == [sig.to_json()]
            assert seen[0].redelivered
        await mine.ack(held)
        await mine.close()
        await theirs.close()
    finally:
        await holder.close()
        await other.close()


async def test_a_dead_letter_reason_with_characters_sqs_refuses_is_kept_readable(
    aws_config: Config, unique: str
) -> None:
    broker = await connected(aws_config)
    try:
        await broker.publish(task(1, unique))
        consumer = broker.consumer(aws_config.default_queue, prefetch=1, tag="t")
        [delivery] = await eventually(lambda: consumer.fetch(1), "the message")
        await consumer.dead_letter(delivery, "bad \x00 byte\x1b")
        [letter] = await eventually(broker.get_dead_letters, "the dead letter")
        assert letter.reason == "bad ? byte?"
        assert await broker.count_pending() == 0
        await consumer.close()
    finally:
        await broker.close()
