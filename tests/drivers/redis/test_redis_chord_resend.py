"""A chord trigger re-sent after a lost reply (redis-py retries on connection errors) must
still report the trigger to the caller that made it, or the callback would never be sent."""

from __future__ import annotations

import pytest

from machinery_aio import Config
from machinery_aio.drivers.redis.backend import RedisBackend, chord_owner_key
from machinery_aio.drivers.redis.batcher import run_script
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.state_scripts import TRIGGER_CHORD
from tests.drivers.redis.conftest import make_config


@pytest.mark.parametrize("go_compatible", [True, False])
async def test_resent_trigger_is_still_the_callers(
    redis_url: str, unique: str, raw: RedisClient, go_compatible: bool
) -> None:
    config: Config = make_config(redis_url, unique)
    config.go_compatible = go_compatible
    backend = RedisBackend(config, redis_url)
    group = f"group_{unique}"
    try:
        await backend.init_group(group, [f"task_{unique}_1", f"task_{unique}_2"])
        keys, token = [group, chord_owner_key(group)], "caller-a"
        first = await run_script(raw, TRIGGER_CHORD, keys, [600, token])
        resent = await run_script(raw, TRIGGER_CHORD, keys, [600, token])
        other = await run_script(raw, TRIGGER_CHORD, keys, [600, "caller-b"])
        assert (first, resent, other) == (1, 1, 0)
        assert await backend.trigger_chord(group) is False  # a new caller: someone else won
        meta = await backend.get_group_meta(group)
        assert meta is not None
        assert meta.chord_triggered
        await backend.purge_group_meta(group)
        assert await raw.exists(group, chord_owner_key(group)) == 0
    finally:
        await backend.close()


async def test_trigger_through_the_backend_fires_once(redis_url: str, unique: str, raw: RedisClient) -> None:
    backend = RedisBackend(make_config(redis_url, unique), redis_url)
    group = f"group_{unique}"
    try:
        await backend.init_group(group, [f"task_{unique}_1"])
        results = [await backend.trigger_chord(group) for _ in range(5)]
        assert results == [True, False, False, False, False]
        assert await raw.ttl(chord_owner_key(group)) > 0
    finally:
        await backend.purge_group_meta(group)
        await backend.close()
