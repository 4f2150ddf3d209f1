"""RabbitMQ connections from Go Machinery's URLs, and channel helpers (needs the ``amqp`` extra).

Accepted, as Go Machinery accepts them:

* ``amqp://user:password@host:port/vhost``; an empty path or ``/`` is the
  vhost ``/`` (``%2F`` also spells it);
* ``amqps://...`` for TLS, with the CA, certificate and key from
  ``Config.tls`` (or aio-pika's own URL options such as ``?cafile=``);
* several URLs in ``Config.broker`` joined by ``multiple_broker_separator``
  for failover: the first one that answers is used.

Connections are aio-pika's robust connections: when a connection drops they
reconnect by themselves and restore channels, queues, bindings and
consumers. This one also backs off (0.5 s doubling up to 30 s, reset once
connected) and, with several URLs, moves to the next URL after each failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aio_pika import Channel, RobustConnection
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelInvalidStateError
from yarl import URL

from ...config import Config, ConfigError, TLSConfig
from ...log import get_logger
from ...urls import mask_url, scheme_of

__all__ = [
    "FailoverConnection",
    "check_url",
    "connect",
    "connection_name",
    "is_live",
    "peek",
    "retry_transient",
    "scratch_channel",
    "ssl_context",
]

logger = get_logger("machinery_aio.amqp")

BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
RECONNECT_WAIT = 30.0
"""Seconds an operation keeps retrying while the connection is being re-established."""
TRANSIENT = (ConnectionError, ChannelInvalidStateError)
"""Errors that mean "the connection or channel is gone for now" (aiormq's are ConnectionErrors)."""

T = TypeVar("T")


def ssl_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """A client TLS context from ``Config.tls``, or None when nothing is configured."""
    if not (tls.ca_file or tls.cert_file or tls.key_file or tls.insecure_skip_verify):
        return None
    for what, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"tls.{what} {path!r} does not exist or is not a file")
    if tls.key_file and not tls.cert_file:
        raise ConfigError("tls.key_file is set but tls.cert_file is not")
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls.ca_file {tls.ca_file!r} holds no usable CA certificate: {exc}") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"tls.cert_file {tls.cert_file!r} / tls.key_file {tls.key_file!r} are not a "
                f"usable certificate and key: {exc}"
            ) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check_url(url: str) -> URL:
    """Parse an ``amqp://`` or ``amqps://`` URL; raise ConfigError (password masked) if it is not one."""
    if scheme_of(url) not in ("amqp", "amqps"):
        raise ConfigError(f"not an AMQP URL: {mask_url(url)!r}")
    try:
        parsed = URL(url.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid AMQP URL {mask_url(url)!r}: {exc}") from None
    if not parsed.host:
        raise ConfigError(f"AMQP URL {mask_url(url)!r} has no host")
    return parsed


_CLOSERS: set[asyncio.Task[None]] = set()
"""The tasks of :meth:`FailoverConnection.close_at_exit` (the loop keeps only weak references)."""
_warned_left_open = False


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection with back-off and several URLs to fail over between."""

    def __init__(self, urls: Sequence[URL], start: int = 0, **kwargs: Any) -> None:
        self._urls = list(urls)
        self._index = start
        self._failures = 0
        self._owner_closed: asyncio.Future[None] | None = None
        super().__init__(self._urls[start], **kwargs)
        self.reconnect_interval = BACKOFF_START

    def close_at_exit(self) -> None:
        """Close this connection, with one warning line, if the event loop ends with it open.

        ``asyncio.run`` cancels the tasks left when the main coroutine returns, then
        closes the loop: aio-pika's connection tasks end on a closed loop ("Task was
        destroyed but it is pending!", "Event loop is closed"). This task is cancelled
        with them and closes the connection while the loop still runs.
        """
        loop = asyncio.get_running_loop()
        self._owner_closed = loop.create_future()
        task = loop.create_task(self._close_when_cancelled(self._owner_closed), name="close AMQP at exit")
        _CLOSERS.add(task)
        task.add_done_callback(_CLOSERS.discard)

    async def _close_when_cancelled(self, owner_closed: asyncio.Future[None]) -> None:
        try:
            await owner_closed
        except asyncio.CancelledError:
            if not self.close_called:
                _warn_left_open()
                with contextlib.suppress(Exception):
                    await self.close()
            raise

    async def close(self, exc: Any = asyncio.CancelledError) -> None:
        owner_closed = self._owner_closed
        if owner_closed is not None and not owner_closed.done():
            owner_closed.set_result(None)
        await super().close(exc)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this when an open connection drops and after every failed attempt.
        if not self._close_called:
            self._failures += 1
            self.reconnect_interval = min(BACKOFF_CAP, BACKOFF_START * 2 ** (self._failures - 1))
            if len(self._urls) > 1:
                self._index = (self._index + 1) % len(self._urls)
                self.url = self._urls[self._index]
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        if self._failures:
            logger.info("reconnected to %s", mask_url(str(self.url)))
        self._failures = 0
        self.reconnect_interval = BACKOFF_START


def _warn_left_open() -> None:
    global _warned_left_open
    if not _warned_left_open:
        _warned_left_open = True
        logger.warning(
            "a RabbitMQ connection was still open when the event loop ended; closing it "
            "(close it yourself with `await server.close()` or `async with server`)"
        )


def connection_name(role: str) -> str:
    """How connections show in RabbitMQ's management tools: ``machinery-aio broker host:pid``."""
    return f"machinery-aio {role} {socket.gethostname()}:{os.getpid()}"


async def connect(
    config: Config, urls: Sequence[str], name: str, timeout: float = 15.0
) -> FailoverConnection:
    """Connect to the first of ``urls`` that answers; raise ConnectionError naming them (masked)."""
    parsed = [check_url(u) for u in urls]
    if not parsed:
        raise ConfigError("no AMQP URL given")
    context = ssl_context(config.tls) if any(u.scheme == "amqps" for u in parsed) else None
    errors: list[str] = []
    for index, url in enumerate(parsed):
        connection = FailoverConnection(
            parsed,
            index,
            ssl_context=context if url.scheme == "amqps" else None,
            client_properties={"connection_name": name},
        )
        try:
            await connection.connect(timeout=timeout)
        except Exception as exc:
            await connection.close()
            errors.append(f"{mask_url(str(url))}: {type(exc).__name__}: {exc}")
            continue
        connection.close_at_exit()
        return connection
    raise ConnectionError("cannot connect to RabbitMQ: " + "; ".join(errors))


# -- channels and messages ------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_channel(connection: RobustConnection) -> AsyncIterator[AbstractChannel]:
    """A plain channel for one job, closed afterwards.

    Operations that may fail by design (a passive declare of a missing queue,
    an exclusive consume someone else holds) close their channel; on a
    scratch channel that harms nobody else and nothing tries to restore it.
    """
    await connection.ready()
    channel = Channel(connection, publisher_confirms=False)
    await channel
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


def is_live(message: AbstractIncomingMessage) -> bool:
    """True while the channel the message came on is open, so its delivery tag still counts."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


@contextlib.asynccontextmanager
async def held_messages(
    channel: AbstractChannel, queue: str, limit: int
) -> AsyncIterator[list[AbstractIncomingMessage]]:
    """Up to ``limit`` messages of ``queue``, taken without ack and put back on exit.

    Go's way: ``basic.get`` without ack, then nack with requeue, which puts
    each message back where it was. While they are held, the messages are
    invisible to other readers.
    """
    source = await channel.get_queue(queue, ensure=False)
    held: list[AbstractIncomingMessage] = []
    try:
        while len(held) < limit:
            message = await source.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
        yield held
    finally:
        for message in held:
            if is_live(message):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)


async def peek(channel: AbstractChannel, queue: str, limit: int) -> list[bytes]:
    """The bodies of up to ``limit`` messages in ``queue``, left in place."""
    async with held_messages(channel, queue, limit) as held:
        return [m.body for m in held]


async def open_channel(
    connection: AbstractRobustConnection, publisher_confirms: bool, on_return_raises: bool = False
) -> AbstractRobustChannel:
    """A new channel on ``connection``. While a robust connection is re-establishing itself,
    aio-pika raises RuntimeError("Connection was not opened"): that is a ConnectionError
    here, so :func:`retry_transient` and the consumer's reconnect loop wait for it."""
    try:
        return await connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
        )
    except RuntimeError as exc:
        raise ConnectionError(f"the RabbitMQ connection is reconnecting ({exc})") from exc


async def retry_transient(
    operation: Callable[[], Awaitable[T]], what: str, timeout: float = RECONNECT_WAIT
) -> T:
    """Run ``operation``; while the connection is down, retry with back-off for up to ``timeout`` s.

    A publish retried this way may reach RabbitMQ twice if the first one got
    there but its confirm was lost with the connection (at-least-once).
    """
    deadline = time.monotonic() + timeout
    pause = 0.1
    warned = False
    while True:
        try:
            return await operation()
        except TRANSIENT as exc:
            if time.monotonic() + pause > deadline:
                raise
            if not warned:
                logger.warning(
                    "%s failed (%s: %s); retrying while RabbitMQ reconnects", what, type(exc).__name__, exc
                )
                warned = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
