"""The Pub/Sub emulator for the tests: where it is, and cleaning up what a test made.

Tests reach the emulator the standard way, through ``PUBSUB_EMULATOR_HOST``
(set here to 127.0.0.1:8085 unless the environment names another). Where the
emulator's Debian package is absent and no emulator is named, the Pub/Sub
tests are left out (``tests.services`` says so); where it is present but not
running, they fail under CI like any other missing server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from machinery_aio import Config
from tests.services import PUBSUB, pubsub_emulator, wait_open

__all__ = [
    "PROJECT",
    "PUBSUB_SERVER",
    "PrivateEmulator",
    "pubsub_available",
    "pubsub_cleanup",
    "pubsub_settings",
    "pubsub_url",
]

_NAMED = "PUBSUB_EMULATOR_HOST" in os.environ
os.environ.setdefault("PUBSUB_EMULATOR_HOST", f"{PUBSUB[0]}:{PUBSUB[1]}")
_host, _, _port = os.environ["PUBSUB_EMULATOR_HOST"].rpartition(":")
PUBSUB_SERVER = (_host, int(_port), "the Pub/Sub emulator (PUBSUB_EMULATOR_HOST)")
PROJECT = "machinery-test"


def pubsub_available() -> bool:
    """The emulator is installed here, or the environment names one."""
    return _NAMED or pubsub_emulator() is not None


def pubsub_url(unique: str) -> str:
    return f"gcppubsub://{PROJECT}/{unique}_sub"


def pubsub_settings(config: Config, unique: str) -> None:
    config.gcp_pubsub.ack_deadline = 10  # a killed consumer's messages return after 10 s
    config.result_backend = "memory://"


async def pubsub_cleanup(config: Config, unique: str, names: set[str]) -> None:
    """Delete the test's subscriptions and topics (every one has ``unique`` in its name)."""
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

    publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
    try:
        async for sub in await subscriber.list_subscriptions(project=f"projects/{PROJECT}"):
            if unique in sub.name:
                await subscriber.delete_subscription(subscription=sub.name)
        async for topic in await publisher.list_topics(project=f"projects/{PROJECT}"):
            if unique in topic.name:
                await publisher.delete_topic(topic=topic.name)
    finally:
        await publisher.transport.close()  # type: ignore[no-untyped-call]
        await subscriber.transport.close()  # type: ignore[no-untyped-call]


class PrivateEmulator:
    """A Pub/Sub emulator of a test's own on ``port`` (to restart it); stopped with :meth:`stop`."""

    def __init__(self, port: int, log: Path) -> None:
        launcher = pubsub_emulator()
        assert launcher is not None, "the Pub/Sub emulator is not installed"
        self.launcher = launcher
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.launcher, "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        assert wait_open("127.0.0.1", self.port, 60), self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
