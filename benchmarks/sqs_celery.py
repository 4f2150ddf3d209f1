"""Celery's SQS transport (kombu) on the same moto server as ``benchmarks.sqs_drain``, for
comparison: **emulator figures**. Needs an interpreter with ``celery[sqs]`` and ``redis``
(results go to Redis, as in ``sqs_drain --results redis``):

    python -m venv /tmp/celery-sqs && /tmp/celery-sqs/bin/pip install 'celery[sqs]' redis
    /tmp/celery-sqs/bin/python -m benchmarks.sqs_celery [--tasks 500] [--concurrency 50]
                                                         [--moto-log .services/moto/moto.log]

With ``--moto-log`` (moto's access log, one line per request) it also reports moto requests
per task, to set beside ``sqs_drain``'s counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery import Celery

PREFIX = os.environ.setdefault("SQS_CELERY_PREFIX", f"celery{uuid.uuid4().hex[:8]}")
QUEUE = "bench"

app = Celery(
    "sqs_celery",
    broker=os.environ.get("SQS_CELERY_BROKER", "sqs://testing:testing@127.0.0.1:5000"),
    backend=os.environ.get("SQS_CELERY_RESULTS", "redis://127.0.0.1:6379/1"),
)
app.conf.broker_transport_options = {
    "region": "us-east-1",
    "is_secure": False,
    "wait_time_seconds": 1,
    "polling_interval": 0.1,
    "queue_name_prefix": PREFIX,
}
app.conf.task_default_queue = QUEUE
app.conf.result_expires = 300


@app.task(name="noop")
def noop() -> None:
    return None


def lines(path: Path | None) -> int:
    return sum(1 for _ in path.open("rb")) if path else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Celery's SQS transport on moto")
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--moto-log", type=Path)
    args = parser.parse_args()
    before = lines(args.moto_log)
    started = time.perf_counter()
    results = [noop.delay() for _ in range(args.tasks)]
    print(f"enqueue {args.tasks}: {time.perf_counter() - started:.2f} s  [emulator figure]")
    sent = lines(args.moto_log)
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "benchmarks.sqs_celery", "worker", "-P", "threads",
            "-c", str(args.concurrency), "-Q", QUEUE, "-l", "warning",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
        ],
        env={**os.environ, "SQS_CELERY_PREFIX": PREFIX},
    )  # fmt: skip
    try:
        started = time.perf_counter()
        for result in results:
            result.get(timeout=600)
        elapsed = time.perf_counter() - started
        print(
            f"drain {args.tasks} at concurrency {args.concurrency} (worker start included): {elapsed:.2f} s, "
            f"{args.tasks / elapsed:.0f} tasks/s  [emulator figure]"
        )
        drained = lines(args.moto_log)
    finally:
        worker.terminate()
        worker.wait(60)
    if args.moto_log:
        print(
            f"moto requests per task: send {(sent - before) / args.tasks:.2f}, "
            f"drain {(drained - sent) / args.tasks:.2f}"
        )


if __name__ == "__main__":
    main()
