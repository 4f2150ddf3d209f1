"""One ``/metrics`` for ``machinery-aio worker --processes N --metrics-port PORT`` (needs the
``prometheus`` extra), with prometheus-client's multiprocess mode.

The supervisor makes a private directory and gives it to its children as
``PROMETHEUS_MULTIPROC_DIR``; each child's metrics are then written to files there, and the
supervisor serves what :class:`prometheus_client.multiprocess.MultiProcessCollector` reads
from them: counters and histograms summed over every child that ever ran (a dead child's
counts stay), gauges as their ``multiprocess_mode`` says (see
:mod:`machinery_aio.middlewares.prometheus`). When a child exits the supervisor calls
``mark_process_dead`` so its live gauges go; the directory is removed on close.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable

try:
    from prometheus_client import CollectorRegistry, multiprocess
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    from ..drivers import MissingExtraError

    raise MissingExtraError(
        "--metrics-port needs prometheus-client: pip install 'machinery-aio[prometheus]'"
    ) from exc

from .prometheus import serve_metrics

__all__ = ["MULTIPROC_DIR", "MultiProcessMetrics"]

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that puts prometheus-client in a child into multiprocess mode."""


class MultiProcessMetrics:
    """Serves the children's metrics, summed, at ``http://address:port/metrics``.

    Opening makes the directory and binds the port (an :class:`OSError` if it cannot,
    with the directory removed again); :attr:`environ` is what the children need.
    """

    def __init__(self, port: int, address: str = "0.0.0.0") -> None:
        self.port = port
        self.address = address
        self.path = ""
        self._stop: Callable[[], None] | None = None

    def open(self) -> None:
        self.path = tempfile.mkdtemp(prefix="machinery-aio-metrics-")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        try:
            self._stop = serve_metrics(self.port, self.address, registry)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    @property
    def environ(self) -> dict[str, str]:
        """Environment variables for a child (set before it imports prometheus-client)."""
        return {MULTIPROC_DIR: self.path}

    def process_dead(self, pid: int) -> None:
        """A child has exited: drop its live gauges (its counters stay in the sums)."""
        multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop serving and remove the directory."""
        if self._stop is not None:
            self._stop()
            self._stop = None
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> MultiProcessMetrics:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
