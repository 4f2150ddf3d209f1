"""What a broker that keeps worker heartbeats (a WorkerRegistry) promises."""

from __future__ import annotations

import pytest

from machinery_aio.drivers.registry import WorkerRegistry
from tests.contract import registry_cases
from tests.contract.conftest import Kit

pytestmark = [pytest.mark.contract("broker"), pytest.mark.needs("worker_registry")]


async def registry(kit: Kit) -> WorkerRegistry:
    made = await kit.broker()
    assert isinstance(made, WorkerRegistry)
    return made


async def test_live_records_are_listed_replaced_and_removed(kit: Kit) -> None:
    await registry_cases.live_records_are_listed_replaced_and_removed(await registry(kit), kit.unique)


async def test_expired_records_are_not_listed(kit: Kit) -> None:
    await registry_cases.expired_records_are_not_listed(await registry(kit), kit.unique)
