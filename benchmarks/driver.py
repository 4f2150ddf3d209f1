"""Measure one target (one library on one broker) once; run in that library's interpreter.

``python -m benchmarks.driver --adapter benchmarks.peers.arq_bench --url redis://... --out f.json``
writes one JSON object with every figure. Worker processes are started here, as
subprocesses, so their CPU time and peak RSS can be read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import procfs
from benchmarks.protocol import Adapter, Unavailable

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.002
"""Seconds between looks at a result while timing a drain."""


_WORKERS: set[int] = set()
"""Process groups of the workers still running, killed if the driver itself is stopped."""


def _on_term(signum: int, frame: object) -> None:
    for pgid in list(_WORKERS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(128 + signum)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cls: type[Adapter] = importlib.import_module(args.adapter).ADAPTER
        self.logs = Path(args.logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:8]

    def adapter(self, phase: str) -> Adapter:
        queue = f"bench-{self.cls.library}-{self.tag}-{phase}"
        return self.cls(self.args.url, self.args.backend, queue, self.args.concurrency)

    # -- housekeeping ---------------------------------------------------------------

    async def flush(self) -> None:
        """Empty the benchmark's Redis database between phases (it must be the suite's own)."""
        if not self.args.flush:
            return
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.args.flush)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    async def server_pids(self) -> list[int]:
        """The local redis-server behind ``--flush`` and, for AMQP targets, RabbitMQ's VM:
        their CPU time is part of what each task costs."""
        pids: list[int] = []
        if self.args.flush:
            import redis.asyncio as aioredis

            client = aioredis.from_url(self.args.flush)
            try:
                pid = int((await client.info("server"))["process_id"])
                if procfs.cpu_seconds([pid]) > 0:  # a local process we can read
                    pids.append(pid)
            except Exception as exc:
                log(f"cannot read redis-server's CPU time: {exc}")
            finally:
                await client.aclose()
        if self.args.url.startswith("amqp"):
            pids += procfs.pids_named("beam.smp")
        return pids

    def start_worker(self, adapter: Adapter, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **adapter.worker_env(), "PYTHONPATH": str(ROOT)}
        sink = open(self.logs / f"{adapter.library}-{name}.log", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                adapter.worker_command(),
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            sink.close()
        _WORKERS.add(proc.pid)
        return proc

    @staticmethod
    def stop_worker(proc: subprocess.Popen[bytes]) -> None:
        began = time.monotonic()
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # leftovers of the worker's own process group (pool children)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _WORKERS.discard(proc.pid)
        log(f"worker {proc.pid} stopped in {time.monotonic() - began:.1f} s")

    def _check_alive(self, procs: Sequence[subprocess.Popen[bytes]], adapter: Adapter) -> None:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{adapter.library} worker exited with {proc.returncode}; see {self.logs}")

    async def _wait_done(
        self,
        adapter: Adapter,
        handle: Any,
        deadline: float,
        procs: Sequence[subprocess.Popen[bytes]],
    ) -> None:
        while not await adapter.is_done(handle):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{adapter.library}: a task's result was not stored within {self.args.timeout:g} s"
                )
            self._check_alive(procs, adapter)
            await asyncio.sleep(POLL)

    # -- phases -----------------------------------------------------------------------

    async def enqueue_one(self) -> float:
        adapter = self.adapter("enq1")
        await adapter.setup()
        try:
            n: int = self.args.n_enqueue
            start = time.perf_counter()
            for x in range(n):
                await adapter.enqueue(x)
            return n / (time.perf_counter() - start)
        finally:
            await adapter.cleanup()
            await adapter.close()
            await self.flush()

    async def fill(self, adapter: Adapter) -> tuple[list[Any], float | None]:
        """Queue N tasks; return the handles and the batched enqueue rate (None: no batch API)."""
        n, size = self.args.n, self.args.batch
        handles: list[Any] = []
        start = time.perf_counter()
        if adapter.batch_api:
            for first in range(0, n, size):
                handles.extend(await adapter.enqueue_batch(list(range(first, min(n, first + size)))))
            return handles, n / (time.perf_counter() - start)
        for first in range(0, n, 100):  # no bulk call: 100 single sends in flight
            handles.extend(
                await asyncio.gather(*(adapter.enqueue(x) for x in range(first, min(n, first + 100))))
            )
        return handles, None

    async def drain(self, processes: int) -> dict[str, float | None]:
        adapter = self.adapter(f"drain{processes}")
        await adapter.setup()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            handles, batch_rate = await self.fill(adapter)
            deadline = time.monotonic() + self.args.timeout
            if adapter.in_process:
                await adapter.start_in_process()
                root_pids = [os.getpid()]
            else:
                procs = [self.start_worker(adapter, f"drain{processes}-{i}") for i in range(processes)]
                root_pids = [p.pid for p in procs]
            servers = [] if adapter.in_process else await self.server_pids()
            await self._wait_done(adapter, handles[0], deadline, procs)
            start = time.perf_counter()
            pids = {pid for root in root_pids for pid in procfs.tree(root)}
            cpu_start = procfs.cpu_seconds(sorted(pids))
            server_cpu_start = procfs.cpu_seconds(servers)
            await self._wait_done(adapter, handles[-1], deadline, procs)
            tail = handles[-2 * self.args.concurrency * processes :]
            for handle in tail:  # concurrent slots may finish a little out of order
                await self._wait_done(adapter, handle, deadline, procs)
            elapsed = time.perf_counter() - start
            server_cpu = procfs.cpu_seconds(servers) - server_cpu_start
            pids |= {pid for root in root_pids for pid in procfs.tree(root)}
            cpu = procfs.cpu_seconds(sorted(pids)) - cpu_start
            rss = procfs.peak_rss_mib(sorted(pids))
            for handle in handles:  # untimed: every task must have its result recorded
                await self._wait_done(adapter, handle, deadline, procs)
            if adapter.in_process:
                await adapter.stop_in_process()
            return {
                "rate": self.args.n / elapsed,
                "batch_rate": batch_rate,
                "cpu_us_per_task": cpu / self.args.n * 1e6,
                "server_cpu_us_per_task": (server_cpu / self.args.n * 1e6) if servers else None,
                "rss_mib": rss,
            }
        finally:
            for proc in procs:
                self.stop_worker(proc)
            await adapter.cleanup()
            await adapter.close()
            await self.flush()

    async def latency(self) -> tuple[float, float]:
        adapter = self.adapter("rtt")
        await adapter.setup()
        proc = None
        try:
            if adapter.in_process:
                await adapter.start_in_process()
            else:
                proc = self.start_worker(adapter, "rtt")
            async with asyncio.timeout(self.args.timeout):  # the warm-up also waits for the worker
                for x in range(self.args.warmup):
                    await adapter.result(await adapter.enqueue(x), self.args.timeout)
            samples: list[float] = []
            budget = time.monotonic() + self.args.latency_budget
            for x in range(self.args.latency):
                if samples and time.monotonic() > budget:
                    break
                start = time.perf_counter()
                try:
                    async with asyncio.timeout(30.0):
                        value = await adapter.result(await adapter.enqueue(x), 30.0)
                except TimeoutError:
                    raise TimeoutError(f"round trip {x} did not complete within 30 s") from None
                samples.append(time.perf_counter() - start)
                if value != x + 1:
                    raise AssertionError(f"{adapter.library}: add({x}, 1) returned {value!r}")
            if adapter.in_process:
                await adapter.stop_in_process()
            self.latency_samples = len(samples)
            return statistics.median(samples) * 1e3, quantile(samples, 0.99) * 1e3
        finally:
            if proc is not None:
                self.stop_worker(proc)
            await adapter.cleanup()
            await adapter.close()
            await self.flush()

    async def phase(self, out: dict[str, Any], name: str, step: Any, *args: Any) -> None:
        """Run one phase; a failure is recorded under ``errors`` and the other phases go on."""
        try:
            async with asyncio.timeout(self.args.timeout * 2):  # hang guard: a send that never returns
                await step(*args)
        except TimeoutError as exc:
            limit = self.args.timeout * 2
            out.setdefault("errors", {})[name] = str(exc) or f"did not finish within {limit:g} s"
            log(f"{name} failed: {out['errors'][name]}")
        except Unavailable:
            raise
        except Exception as exc:
            out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {out['errors'][name]}")
            traceback.print_exc()

    async def _enqueue_one(self, out: dict[str, Any]) -> None:
        out["enqueue_one"] = await self.enqueue_one()

    async def _drain_1(self, out: dict[str, Any]) -> None:
        one = await self.drain(1)
        out["enqueue_batch"] = one["batch_rate"]
        out["drain_1"] = one["rate"]
        out["cpu_us_per_task"] = one["cpu_us_per_task"]
        out["server_cpu_us_per_task"] = one["server_cpu_us_per_task"]
        out["rss_mib"] = one["rss_mib"]

    async def _drain_2(self, out: dict[str, Any]) -> None:
        out["drain_2"] = (await self.drain(2))["rate"]

    async def _latency(self, out: dict[str, Any]) -> None:
        out["p50_ms"], out["p99_ms"] = await self.latency()
        out["latency_samples"] = self.latency_samples

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "library": self.cls.library,
            "batch_api": self.cls.batch_api,
            "notes": self.cls.notes,
        }
        try:
            out["version"] = self.cls(self.args.url, self.args.backend, "probe", 1).version()
            probe = self.adapter("probe")
            in_process = out["in_process"] = probe.in_process
            await probe.setup()
            await probe.close()
            await self.flush()
            log(f"{self.cls.library}: enqueue one by one")
            await self.phase(out, "enqueue_one", self._enqueue_one, out)
            log("drain, 1 process")
            await self.phase(out, "drain_1", self._drain_1, out)
            if not in_process and self.args.processes2:
                log("drain, 2 processes")
                await self.phase(out, "drain_2", self._drain_2, out)
            log("round trips")
            await self.phase(out, "latency", self._latency, out)
        except Unavailable as exc:
            out["unavailable"] = str(exc)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver")
    parser.add_argument("--adapter", required=True, help="module defining ADAPTER")
    parser.add_argument("--url", required=True, help="broker URL")
    parser.add_argument("--backend", default="", help="result backend URL (default: the broker)")
    parser.add_argument("--flush", default="", help="Redis URL whose database is flushed between phases")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--n-enqueue", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=60.0,
        help="stop the round trips after this many seconds (slow pollers)",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-processes2", dest="processes2", action="store_false")
    parser.add_argument("--logs", default=str(ROOT / "benchmarks" / "results" / "logs"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.backend = args.backend or args.url
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    result = asyncio.run(Driver(args).run())
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
