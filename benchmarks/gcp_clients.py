"""Which Pub/Sub client the gcp driver uses: publish and pull+ack throughput of
google-cloud-pubsub's asyncio GAPIC clients (gRPC, grpc.aio) and of gcloud-aio-pubsub
(REST over aiohttp), against the emulator (``PUBSUB_EMULATOR_HOST``).

``python -m benchmarks.gcp_clients [messages]``; gcloud-aio-pubsub is not a dependency
of machinery-aio: install it by hand to compare (``pip install gcloud-aio-pubsub``).
Figures are the emulator's, not Google's service.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

PROJECT = "bench-clients"
BATCH = 100
BODY = b'{"UUID":"task_x","Name":"add","Args":[{"Name":"","Type":"int64","Value":1}]}'


async def gapic(count: int) -> tuple[float, float]:
    from google.api_core import exceptions
    from google.pubsub_v1 import PubsubMessage
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

    publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
    name = f"gapic-{uuid.uuid4().hex[:8]}"
    topic, sub = f"projects/{PROJECT}/topics/{name}", f"projects/{PROJECT}/subscriptions/{name}"
    await publisher.create_topic(name=topic)
    await subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                publisher.publish(topic=topic, messages=[PubsubMessage(data=BODY)] * BATCH)
                for _ in range(count // BATCH)
            )
        )
        published = time.perf_counter() - start
        start = time.perf_counter()
        got = 0
        while got < count:
            response = await subscriber.pull(subscription=sub, max_messages=BATCH, timeout=30)
            ids = [m.ack_id for m in response.received_messages]
            if ids:
                await subscriber.acknowledge(subscription=sub, ack_ids=ids)
            got += len(ids)
        pulled = time.perf_counter() - start
    finally:
        try:
            await subscriber.delete_subscription(subscription=sub)
            await publisher.delete_topic(topic=topic)
        except exceptions.GoogleAPIError:
            pass
    return count / published, count / pulled


async def gcloud_aio(count: int) -> tuple[float, float]:
    from gcloud.aio.pubsub import PublisherClient, PubsubMessage, SubscriberClient

    publisher, subscriber = PublisherClient(), SubscriberClient()
    name = f"aio-{uuid.uuid4().hex[:8]}"
    topic, sub = f"projects/{PROJECT}/topics/{name}", f"projects/{PROJECT}/subscriptions/{name}"
    await publisher.create_topic(topic)
    await subscriber.create_subscription(sub, topic, {"ackDeadlineSeconds": 60})
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(publisher.publish(topic, [PubsubMessage(BODY)] * BATCH) for _ in range(count // BATCH))
        )
        published = time.perf_counter() - start
        start = time.perf_counter()
        got = 0
        while got < count:
            messages: list[Any] = await subscriber.pull(sub, BATCH, timeout=30)
            ids = [m.ack_id for m in messages]
            if ids:
                await subscriber.acknowledge(sub, ids)
            got += len(ids)
        pulled = time.perf_counter() - start
    finally:
        await subscriber.delete_subscription(sub)
        await publisher.delete_topic(topic)
        await publisher.close()
        await subscriber.close()
    return count / published, count / pulled


async def main(count: int) -> None:
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        sys.exit("set PUBSUB_EMULATOR_HOST (the figures are meant for the emulator)")
    print(f"Pub/Sub emulator at {os.environ['PUBSUB_EMULATOR_HOST']}, {count} messages, batches of {BATCH}")
    for label, run in (
        ("google-cloud-pubsub (GAPIC, grpc.aio)", gapic),
        ("gcloud-aio-pubsub (REST)", gcloud_aio),
    ):
        try:
            pub, pull = await run(count)
        except ImportError as exc:
            print(f"{label}: not installed ({exc.name})")
            continue
        print(f"{label}: publish {pub:,.0f} msg/s, pull+ack {pull:,.0f} msg/s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
