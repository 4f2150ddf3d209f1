"""Deleting what a test declared on RabbitMQ."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aio_pika

from machinery_aio import Config, Signature
from machinery_aio.drivers.amqp.layout import DEAD_LETTER_EXCHANGE

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Cleanup:
    """Names a test declared on RabbitMQ, deleted by :meth:`run`."""

    vhost_url: str = AMQP_URL
    queues: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    def uuid(self, name: str) -> None:
        """A task's result queue, or a group's queues."""
        self.queues.add(name)
        if name.startswith("group_"):
            self.queues.update({f"{name}_meta", f"{name}_chord_lock", f"{name}_chord_triggered"})

    def signature(self, sig: Signature) -> None:
        self.uuid(sig.uuid)
        for callback in [*(sig.on_success or ()), *(sig.on_error or ())]:
            self.signature(callback)
        if sig.chord_callback is not None:
            self.signature(sig.chord_callback)
        if sig.group_uuid:
            self.uuid(sig.group_uuid)

    def queue(self, name: str) -> None:
        """A task queue, with the queues beside it (dead letters, hand-backs)."""
        self.queues.update({name, f"{name}.dead", f"{name}.handback"})

    def config(self, config: Config) -> None:
        self.exchanges.add(config.amqp.exchange)
        self.queue(config.default_queue)
        if config.amqp.delayed_queue:
            self.queues.add(config.amqp.delayed_queue)

    async def run(self) -> None:
        connection = await aio_pika.connect(self.vhost_url)
        try:
            for name in self.queues:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
            for name in self.exchanges:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
            # The shared dead-letter exchange goes once no test has a queue bound to it.
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(DEAD_LETTER_EXCHANGE, if_unused=True)
        finally:
            await connection.close()
