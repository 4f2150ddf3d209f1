"""Fixtures for the AWS tests: moto's server on 127.0.0.1:5000 standing in for SQS and
DynamoDB. Every test has its own queues and tables (named after its ``unique`` name),
deleted after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from machinery_aio import Config, Server
from machinery_aio.drivers.aws.client import Clients, parse_url
from tests.conftest import require_server
from tests.support.aws import DYNAMODB_URL, MOTO, SQS_URL, aws_cleanup, aws_settings, use_moto

use_moto()


@pytest.fixture
def moto() -> None:
    require_server(*MOTO)


@pytest.fixture
async def aws_config(moto: None, unique: str) -> AsyncIterator[Config]:
    """SQS broker, DynamoDB results, the test's own queue and tables."""
    config = Config(
        broker=SQS_URL, result_backend=DYNAMODB_URL, default_queue=f"{unique}_q", results_expire_in=600
    )
    aws_settings(config, unique)
    yield config
    await aws_cleanup(config, unique, set())


@pytest.fixture
async def sqs(moto: None) -> AsyncIterator[Any]:
    """A plain SQS client, for what the tests send and look at by hand."""
    clients = Clients(parse_url(SQS_URL, "sqs"))
    yield await clients.get()
    await clients.close()


@pytest.fixture
async def dynamodb(moto: None) -> AsyncIterator[Any]:
    """A plain DynamoDB client."""
    clients = Clients(parse_url(DYNAMODB_URL, "dynamodb"))
    yield await clients.get()
    await clients.close()


@pytest.fixture
async def aws_server(aws_config: Config) -> AsyncIterator[Server]:
    server = Server(aws_config)
    yield server
    await server.close()
