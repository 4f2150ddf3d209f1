"""aiobotocore clients for the AWS drivers, built from a Go Machinery URL.

``https://sqs.<region>.amazonaws.com/<account>/`` and ``https://dynamodb.<region>.amazonaws.com``
give the region (and the queues' account). Credentials, and the endpoint of an emulator
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SQS``, ``AWS_ENDPOINT_URL_DYNAMODB``), come from
the standard AWS chain. A URL whose host is not an ``amazonaws.com`` one
(``https://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/``) is used as the
endpoint itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

__all__ = ["AwsUrl", "Clients", "parse_url"]

MAX_CONNECTIONS = 64
"""HTTP connections per client: receives, deletes, heartbeats and publishes run side by side."""


@dataclass(frozen=True, slots=True)
class AwsUrl:
    """What a Go Machinery AWS URL says."""

    service: str
    region: str | None
    account: str
    endpoint: str | None
    """Where to send requests when the host is not AWS's own; None lets botocore decide."""


def parse_url(url: str, service: str) -> AwsUrl:
    """The region, account and endpoint of an ``https://<service>.<region>.amazonaws.com/...`` URL."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    labels = host.split(".")
    region = None
    if service in labels:
        after = labels[labels.index(service) + 1 :]
        if after and after[0] not in ("amazonaws", "localhost") and "-" in after[0]:
            region = after[0]
    account = parts.path.strip("/").split("/", 1)[0]
    aws_host = host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
    endpoint = None if aws_host else f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    return AwsUrl(service, region, account, endpoint)


_session: AioSession | None = None


def _shared_session() -> AioSession:
    """One botocore session per process: it caches the service models that every client loads."""
    global _session
    if _session is None:
        _session = get_session()
    return _session


class Clients:
    """One aiobotocore client, opened on first use and closed with :meth:`close`."""

    def __init__(self, url: AwsUrl) -> None:
        self.url = url
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def get(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is not None:
                return self._client
            stack = contextlib.AsyncExitStack()
            session = _shared_session()
            config = AioConfig(
                max_pool_connections=MAX_CONNECTIONS,
                retries={"max_attempts": 5, "mode": "standard"},
                read_timeout=70,
            )
            region = self.url.region or session.get_config_variable("region") or "us-east-1"
            self._client = await stack.enter_async_context(
                session.create_client(
                    self.url.service,
                    region_name=region,
                    endpoint_url=self.url.endpoint,
                    config=config,
                )
            )
            self._stack = stack
        return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
