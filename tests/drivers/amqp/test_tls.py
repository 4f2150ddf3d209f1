"""``amqps://`` with the CA from ``Config.tls``, through a local TLS proxy in front of RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.config import TLSConfig
from machinery_aio.drivers.amqp.broker import AMQPBroker
from tests.conftest import IN_CI
from tests.drivers.amqp.conftest import RABBIT_HOST, RABBIT_PORT, amqp_test_config


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if IN_CI:
            pytest.fail("openssl is needed to make a test certificate")
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_port(certificate: tuple[Path, Path], rabbitmq: None) -> AsyncIterator[int]:
    """A TLS listener that forwards each connection to RabbitMQ's plain port."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(RABBIT_HOST, RABBIT_PORT)
        for task in (
            asyncio.create_task(pipe(client_r, server_w)),
            asyncio.create_task(pipe(server_r, client_w)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for task in list(pipes):
        task.cancel()
    await asyncio.gather(*pipes, return_exceptions=True)
    await server.wait_closed()


async def test_amqps_with_the_configured_ca(
    tls_port: int,
    certificate: tuple[Path, Path],
    unique: str,
    amqp_server: Callable[[Config], Server],
) -> None:
    url = f"amqps://guest:guest@localhost:{tls_port}/"
    config = amqp_test_config(unique, url=url)
    config.tls = TLSConfig(ca_file=str(certificate[0]))
    server = amqp_server(config)

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    async with server.new_worker("w", concurrency=2):
        result = await server.send_task(Signature(name="add", args=[Arg(type="int64", value=2)]))
        assert await result.get(timeout=30) == 2


async def test_amqps_refuses_an_unknown_certificate(tls_port: int, unique: str) -> None:
    config = amqp_test_config(unique, url=f"amqps://guest:guest@localhost:{tls_port}/")
    broker = AMQPBroker(config)
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await broker.connect()
    await broker.close()
