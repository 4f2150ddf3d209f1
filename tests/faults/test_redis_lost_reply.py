"""Regression (found by case 2, a redis-server restarted mid-drain lost one task of 3,000):
when Redis runs a batch claim but its reply is lost with the connection, the claimed messages
sat in the live consumer's processing list for good. The next fetch now gives them back."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from machinery_aio import Arg, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.consumer import RedisConsumer
from machinery_aio.drivers.redis.queue_scripts import CLAIM
from tests.faults.conftest import redis_config


async def test_a_claim_whose_reply_is_lost_is_given_back(
    raw: RedisClient, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = redis_config(unique)
    server = Server(config)
    try:
        sigs = [Signature(uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(i)]) for i in range(5)]
        await server.send_tasks(sigs)
        consumer = server.broker.consumer(config.default_queue, prefetch=10, tag="lost")
        assert isinstance(consumer, RedisConsumer)
        batcher = server.broker.batcher  # type: ignore[attr-defined]
        real = batcher.script

        async def reply_lost(script: Any, keys: Any, args: Any = ()) -> Any:
            result = await real(script, keys, args)  # Redis runs it ...
            if script is CLAIM:
                raise RedisConnectionError("connection lost before the reply")  # ... we never hear
            return result

        monkeypatch.setattr(batcher, "script", reply_lost)
        with pytest.raises(RedisConnectionError):
            await consumer.fetch(10)
        monkeypatch.setattr(batcher, "script", real)
        deliveries = await consumer.fetch(10)
        assert sorted(Signature.from_json(d.body).uuid for d in deliveries) == sorted(s.uuid for s in sigs)
        await consumer.release(deliveries)
        await consumer.close()
    finally:
        await server.close()


async def test_a_claim_run_twice_by_a_client_retry_is_given_back(raw: RedisClient, unique: str) -> None:
    """Found by case 2 after the fix above: redis-py re-sends a command after a dropped
    connection, so a claim Redis ran (reply lost) runs again and succeeds, and the first
    claim's messages sat untracked in the live consumer's processing list."""
    config = redis_config(unique)
    server = Server(config)
    try:
        sigs = [Signature(uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(i)]) for i in range(5)]
        await server.send_tasks(sigs)
        consumer = server.broker.consumer(config.default_queue, prefetch=10, tag="twice")
        assert isinstance(consumer, RedisConsumer)
        first = await consumer.fetch(2)
        # The lost first run of a claim of 3 (as Redis ran it, before the retry).
        await server.broker.batcher.script(  # type: ignore[attr-defined]
            CLAIM,
            [consumer.queue, consumer.processing, consumer.keys.consumers],
            [3, consumer.consumer_id, consumer.timeout_ms],
        )
        await consumer.beat()  # the heartbeat notices what no delivery stands for
        rest = await consumer.fetch(10)
        assert sorted(Signature.from_json(d.body).uuid for d in [*first, *rest]) == sorted(
            s.uuid for s in sigs
        )
        await consumer.release([*first, *rest])
        await consumer.close()
    finally:
        await server.close()
