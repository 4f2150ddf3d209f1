"""What is particular to Pub/Sub: the URL, topics and subscriptions, Go's message data,
ordering keys, dead-letter policies, long ETAs, and giving messages back on close."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from google.pubsub_v1 import ReceivedMessage

from machinery_aio import Arg, Config, Signature
from machinery_aio.config import ConfigError
from machinery_aio.drivers import create_broker
from machinery_aio.drivers.broker import Consumer, DeadLetter, Delivery
from machinery_aio.drivers.gcp import consumer as consumer_module
from machinery_aio.drivers.gcp.broker import GCPPubSubBroker
from machinery_aio.drivers.gcp.resources import Clients
from tests.conftest import golden
from tests.drivers.gcp.conftest import names, needs_emulator, pubsub_config
from tests.support.drivers import eventually

CLOCK_SLACK = 0.05


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gcppubsub://", "gcppubsub://<project>/<subscription>"),
        ("gcppubsub://my-project", "gcppubsub://<project>/<subscription>"),
        ("gcppubsub://my-project/", "gcppubsub://<project>/<subscription>"),
        ("gcppubsub://my-project/a/b", "gcppubsub://<project>/<subscription>"),
        ("gcppubsub://My_Project/tasks", "is not a Google Cloud project ID"),
        ("gcppubsub://my-project/goog-tasks", "is not a valid Pub/Sub name"),
        ("gcppubsub://my-project/ab", "is not a valid Pub/Sub name"),
    ],
)
def test_bad_urls_are_refused_with_the_form_expected(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_broker(Config(broker=url))


def test_the_url_names_the_project_and_the_default_queues_subscription() -> None:
    broker = create_broker(Config(broker="gcppubsub://my-project/machinery-sub", default_queue="jobs"))
    assert isinstance(broker, GCPPubSubBroker)
    assert (
        broker.names.subscription_path("machinery-sub") == "projects/my-project/subscriptions/machinery-sub"
    )
    assert broker.names.subscription_of("jobs") == "machinery-sub"
    assert broker.names.subscription_of("other") == "other"


async def connected(config: Config) -> GCPPubSubBroker:
    broker = create_broker(config)
    assert isinstance(broker, GCPPubSubBroker)
    await broker.connect()
    return broker


async def pull_all(raw: Clients, subscription: str, count: int) -> list[ReceivedMessage]:
    """Pull ``count`` messages straight from Pub/Sub (and ack them)."""
    got: list[ReceivedMessage] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            response = await raw.subscriber.pull(subscription=subscription, max_messages=count - len(got))
            got += response.received_messages
    await raw.subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in got])
    return got


@needs_emulator
async def test_the_message_data_is_the_signature_json_as_go_publishes_it(unique: str, raw: Clients) -> None:
    config = pubsub_config(unique)
    broker = await connected(config)
    try:
        sig = Signature.from_json(
            golden("03_chord_member").replace(b"machinery_tasks", config.default_queue.encode())
        )
        await broker.publish(sig)
        [received] = await pull_all(raw, names(config).subscription_path(f"{unique}_sub"), 1)
        message = received.message
        assert message.data == golden("03_chord_member").replace(
            b"machinery_tasks", config.default_queue.encode()
        )
        assert dict(message.attributes) == {}
        assert message.ordering_key == ""
    finally:
        await broker.close()


@needs_emulator
async def test_tasks_go_to_the_topic_named_after_the_routing_key(unique: str, raw: Clients) -> None:
    config = pubsub_config(unique)
    broker = await connected(config)
    try:
        await broker.publish(Signature(name="add", routing_key=f"{unique}_other", args=[Arg.of(1)]))
        topics = [t.name async for t in await raw.publisher.list_topics(project="projects/machinery-test")]
        assert f"projects/machinery-test/topics/{unique}_other" in topics
        subscription = await raw.subscriber.get_subscription(
            subscription=f"projects/machinery-test/subscriptions/{unique}_other"
        )
        assert subscription.topic == f"projects/machinery-test/topics/{unique}_other"
        assert subscription.ack_deadline_seconds == 10
        assert await broker.count_pending(f"{unique}_other") == 1
    finally:
        await broker.close()


@needs_emulator
async def test_bad_routing_keys_and_etas_beyond_seven_days_are_refused(unique: str, emulator: None) -> None:
    broker = await connected(pubsub_config(unique))
    try:
        with pytest.raises(ValueError, match="is not a valid Pub/Sub name"):
            await broker.publish(Signature(name="add", routing_key="no spaces"))
        far = datetime.now(UTC) + timedelta(days=8)
        with pytest.raises(ValueError, match="at most 7 days"):
            await broker.publish(Signature(name="add", eta=far))
        assert await broker.count_pending() == 0
    finally:
        await broker.close()


@needs_emulator
async def test_existing_topics_and_subscriptions_are_used_as_they_are(unique: str, raw: Clients) -> None:
    config = pubsub_config(unique, ordering=True)
    paths = names(config)
    await raw.publisher.create_topic(name=paths.topic_path(config.default_queue))
    await raw.subscriber.create_subscription(
        name=paths.subscription_path(f"{unique}_sub"),
        topic=paths.topic_path(config.default_queue),
        ack_deadline_seconds=42,
    )
    broker = await connected(config)
    try:
        await broker.publish(Signature(name="add", args=[Arg.of(1)]))
        found = await raw.subscriber.get_subscription(subscription=paths.subscription_path(f"{unique}_sub"))
        assert (found.ack_deadline_seconds, found.enable_message_ordering) == (42, False)
        assert await broker.count_pending() == 1
    finally:
        await broker.close()


@needs_emulator
async def test_ordering_keys_come_from_the_message_group_id_when_ordering_is_on(
    unique: str, raw: Clients
) -> None:
    config = pubsub_config(unique, ordering=True)
    broker = await connected(config)
    try:
        sigs = [
            Signature(uuid=f"task_{unique}_{i}", name="add", broker_message_group_id="customer-7")
            for i in range(3)
        ]
        loose = Signature(uuid=f"task_{unique}_loose", name="add")
        await broker.publish_many([*sigs, loose])
        path = names(config).subscription_path(f"{unique}_sub")
        assert (await raw.subscriber.get_subscription(subscription=path)).enable_message_ordering
        got = await pull_all(raw, path, 4)
        keys = {Signature.from_json(m.message.data).uuid: m.message.ordering_key for m in got}
        assert keys == {**{s.uuid: "customer-7" for s in sigs}, loose.uuid: ""}
    finally:
        await broker.close()


@needs_emulator
async def test_a_dead_letter_policy_is_set_when_asked_and_its_letters_are_listed(
    unique: str, raw: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    config = pubsub_config(unique, dead_letter_max_attempts=5)
    broker = await connected(config)
    try:
        sig = Signature(uuid=f"task_{unique}", name="crashes_its_worker")
        await broker.publish(sig)
        path = names(config).subscription_path(f"{unique}_sub")
        found = await raw.subscriber.get_subscription(subscription=path)
        assert found.dead_letter_policy.dead_letter_topic == names(config).topic_path(f"{unique}_sub.dead")
        assert found.dead_letter_policy.max_delivery_attempts == 5
        for _ in range(5):  # five workers die holding it (deadline 0 stands in for the wait)
            [received] = await pull_all_no_ack(raw, path)
            await raw.subscriber.modify_ack_deadline(
                subscription=path, ack_ids=[received.ack_id], ack_deadline_seconds=0
            )

        async def moved() -> list[DeadLetter]:
            assert await broker.count_pending() == 0  # a pull also lets the emulator move it
            return await broker.get_dead_letters()

        with caplog.at_level(logging.WARNING, "machinery_aio.gcp"):
            letters = await eventually(moved, "the dead letter")
        assert "looking at its messages counts as one delivery attempt" in caplog.text
        assert [(letter.body.encode(), letter.queue) for letter in letters] == [
            (sig.to_json(), config.default_queue)
        ]
        assert "delivered 5 times without an ack" in letters[0].reason
    finally:
        await broker.close()


async def pull_all_no_ack(raw: Clients, path: str) -> list[ReceivedMessage]:
    async with asyncio.timeout(30):
        while True:
            response = await raw.subscriber.pull(subscription=path, max_messages=1)
            if response.received_messages:
                return list(response.received_messages)


async def fetch_one(consumer: Consumer) -> Delivery:
    async with asyncio.timeout(30):
        while True:
            got = await consumer.fetch(1)
            if got:
                return got[0]


@needs_emulator
async def test_a_long_eta_goes_back_to_pubsub_and_is_still_delivered_on_time(
    unique: str, emulator: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: held here when due within 2 s, else given back to come 1 s early.
    monkeypatch.setattr(consumer_module, "HOLD", 2.0)
    monkeypatch.setattr(consumer_module, "EARLY", 1.0)
    given_back: list[int] = []
    deadline_before = consumer_module._deadline_before

    def recorded(due: float, now: float) -> int:
        given_back.append(deadline_before(due, now))
        return given_back[-1]

    monkeypatch.setattr(consumer_module, "_deadline_before", recorded)
    broker = await connected(pubsub_config(unique))
    consumer = broker.consumer(broker.config.default_queue, prefetch=5, tag="t")
    try:
        eta = datetime.now(UTC) + timedelta(seconds=4.5)
        sig = Signature(uuid=f"task_{unique}", name="add", eta=eta)
        await broker.publish(sig)
        delivery = await fetch_one(consumer)
        assert datetime.now(UTC) >= eta - timedelta(seconds=CLOCK_SLACK)
        assert delivery.body == sig.to_json()
        assert given_back == [3]  # given back to Pub/Sub once, for 3 s; then held until due
        assert delivery.redelivered is False  # no dead-letter policy: Pub/Sub does not count
        await consumer.ack(delivery)
    finally:
        await consumer.close()
        await broker.close()


@needs_emulator
async def test_closing_gives_back_unstarted_messages_at_once_and_held_etas_in_time(
    unique: str, emulator: None
) -> None:
    """With a 600 s ack deadline, only an explicit give-back explains a prompt redelivery."""
    broker = await connected(pubsub_config(unique, ack_deadline=600))
    try:
        eta = datetime.now(UTC) + timedelta(seconds=7)
        sigs = [Signature(name="add", args=[Arg.of(i)]) for i in range(2)]
        later = Signature(name="add", eta=eta)
        await broker.publish_many([*sigs, later])
        first = broker.consumer(broker.config.default_queue, prefetch=5, tag="first")
        got = [await fetch_one(first), await fetch_one(first)]
        assert sorted(d.body for d in got) == sorted(s.to_json() for s in sigs)
        await first.close()  # a SIGTERM: nothing was started
        second = broker.consumer(broker.config.default_queue, prefetch=5, tag="second")
        assert isinstance(second, consumer_module.PubSubConsumer)
        again = [await fetch_one(second), await fetch_one(second)]
        assert sorted(d.body for d in again) == sorted(s.to_json() for s in sigs)
        held = await fetch_one(second)
        assert held.body == later.to_json()
        assert datetime.now(UTC) >= eta - timedelta(seconds=CLOCK_SLACK)
        for delivery in [*again, held]:
            await second.ack(delivery)
        await second.close()
    finally:
        await broker.close()


@needs_emulator
async def test_an_ack_id_the_server_no_longer_knows_does_not_fail_the_others(
    unique: str, emulator: None
) -> None:
    """After an emulator restart (or a deadline that passed) some ack IDs are unknown: one of
    them must not make Pub/Sub refuse the deadline changes and acks of the rest."""
    broker = await connected(pubsub_config(unique, ack_deadline=600))
    try:
        sigs = [Signature(uuid=f"task_{unique}_{i}", name="add") for i in range(3)]
        await broker.publish_many(sigs)
        first = broker.consumer(broker.config.default_queue, prefetch=5, tag="first")
        assert isinstance(first, consumer_module.PubSubConsumer)
        got = [await fetch_one(first) for _ in sigs]
        first.leases.leased["projects/x/subscriptions/y:1"] = None  # unknown to the server
        await first.leases.modify(None, 0)  # what the lease loop sends, with deadline 0 to see it
        assert "projects/x/subscriptions/y:1" not in first.leases.leased
        second = broker.consumer(broker.config.default_queue, prefetch=5, tag="second")
        assert isinstance(second, consumer_module.PubSubConsumer)
        again = [await fetch_one(second) for _ in sigs]
        assert sorted(d.body for d in again) == sorted(d.body for d in got)
        await second.leases.send_acks(["projects/x/subscriptions/y:2", *(d.token for d in again)])
        await first.close()
        await second.close()
        assert await broker.count_pending() == 0
    finally:
        await broker.close()
