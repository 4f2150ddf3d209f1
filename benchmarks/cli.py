"""``python -m benchmarks run``: every target, several times, one table of medians, one JSON file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine, report
from benchmarks.envs import EnvError, interpreter, run_dir
from benchmarks.targets import SMOKE, Target, baseline, select

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure machinery-aio and its peers side by side on the same servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite and print the table")
    run.add_argument(
        "--broker",
        default="redis://127.0.0.1:6379/15",
        help="Redis URL for every Redis target and for results; its database is "
        "FLUSHED between measurements, so give the suite a database of its own",
    )
    run.add_argument(
        "--amqp",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="RabbitMQ URL for the amqp targets (results go to --broker)",
    )
    run.add_argument("--n", type=int, default=20_000, help="tasks per drain (default 20000)")
    run.add_argument("--n-enqueue", type=int, default=5_000, help="tasks sent one at a time")
    run.add_argument("--batch", type=int, default=1_000, help="tasks per bulk enqueue call")
    run.add_argument("--concurrency", type=int, default=50, help="task slots per worker process")
    run.add_argument("--latency", type=int, default=500, help="round trips timed for p50/p99")
    run.add_argument(
        "--latency-budget",
        type=float,
        default=30.0,
        help="seconds the round trips may take; slow pollers stop early (samples in JSON)",
    )
    run.add_argument("--repeat", type=int, default=3, help="runs per target; medians are reported")
    run.add_argument(
        "--only",
        help="comma-separated targets, libraries or brokers "
        "(e.g. machinery-aio,arq or redis or celery/redis)",
    )
    run.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure machinery-aio as it was at this git revision (same brokers, same run)",
    )
    run.add_argument("--json", help="where to write the JSON (default benchmarks/results/<time>.json)")
    run.add_argument("--markdown", help="also write the table as Markdown to this file")
    run.add_argument("--timeout", type=float, default=600.0, help="hang guard per phase, seconds")
    run.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run (N=300, 1 repeat, machinery-aio unless --only), well under a minute",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.n_enqueue, args.latency, args.repeat = 300, 200, 30, 1
        args.latency_budget = min(args.latency_budget, 5.0)
        args.timeout = min(args.timeout, 60.0)
        args.only = args.only or ",".join(SMOKE)
    for name in ("n", "n_enqueue", "batch", "concurrency", "latency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n < 2 * args.concurrency:
        parser.error("--n must be at least twice --concurrency")
    return args


def run_target(target: Target, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One measurement of one target, in a driver subprocess of the target's interpreter."""
    if target.broker != "memory" and not machine.reachable(args.broker, 6379):
        return {"unavailable": "Redis is not reachable"}
    if target.broker == "amqp" and not machine.reachable(args.amqp, 5672):
        return {"unavailable": "RabbitMQ is not reachable"}
    emulator = dict(target.variables).get("PUBSUB_EMULATOR_HOST")
    if emulator and not machine.reachable(f"//{emulator}", 8085):
        return {"unavailable": f"the Pub/Sub emulator is not reachable on {emulator}"}
    try:
        python = interpreter(target.env, logs / f"pip-{target.env.replace(':', '-')}.log")
    except EnvError as exc:
        return {"unavailable": str(exc)}
    home = run_dir(target.env) or ROOT
    url, backend = target.urls(args.broker, args.amqp)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            python,
            "-m",
            "benchmarks.driver",
            "--adapter",
            target.adapter,
            "--url",
            url,
            "--backend",
            backend,
            "--n",
            str(args.n),
            "--n-enqueue",
            str(args.n_enqueue),
            "--batch",
            str(args.batch),
            "--concurrency",
            str(args.concurrency),
            "--latency",
            str(args.latency),
            "--latency-budget",
            str(args.latency_budget),
            "--timeout",
            str(args.timeout),
            "--warmup",
            "5" if args.smoke else "20",
            "--logs",
            str(logs),
            "--out",
            str(out),
        ]
        if target.broker != "memory":
            cmd += ["--flush", args.broker]
        env = {**os.environ, **dict(target.variables), "PYTHONPATH": str(home)}
        log = logs / f"{target.library}-{target.broker}-driver.log"
        with open(log, "ab") as sink:
            proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                proc.wait(args.timeout * 4 + 120)
            except BaseException:  # timed out or interrupted: the driver stops its workers on SIGTERM
                proc.terminate()
                proc.wait(30)
                if isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                    return {"error": f"timed out; see {log}"}
                raise
        if not out.exists():
            return {"error": f"driver exited with {proc.returncode}; see {log}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _progress(target: Target, result: dict[str, Any], seconds: float) -> str:
    if "unavailable" in result:
        return f"{target.name}: unavailable: {result['unavailable']}"
    if "error" in result:
        return f"{target.name}: error: {result['error']}"
    figures = ", ".join(
        f"{m.key}={result[m.key]:.4g}" for m in report.METRICS if isinstance(result.get(m.key), int | float)
    )
    return f"{target.name} ({seconds:.0f} s): {figures}"


def run(args: argparse.Namespace) -> int:
    try:
        targets = select(args.only.split(",") if args.only else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.baseline:
        mine = {t.broker for t in targets if t.library == report.LIBRARY}
        targets += baseline(args.baseline, mine)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"benchmarking {len(targets)} targets x {args.repeat} runs; N={args.n}, concurrency "
        f"{args.concurrency}; the Redis database of {args.broker.split('@')[-1]} is flushed "
        f"between measurements; logs in {logs}",
        file=sys.stderr,
        flush=True,
    )
    started = machine.describe(args.broker, args.amqp)
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for repeat in range(args.repeat):  # round-robin, so a noisy spell hits every target alike
        for target in targets:
            began = time.monotonic()
            result = run_target(target, args, logs)
            runs[target.name].append(result)
            print(
                f"[{repeat + 1}/{args.repeat}] {_progress(target, result, time.monotonic() - began)}",
                file=sys.stderr,
                flush=True,
            )
    results = {name: report.summarize(target_runs) for name, target_runs in runs.items()}
    report.add_ratios(results)
    print(report.table(results))
    meta = {
        **started,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "started": stamp,
        "settings": {
            k: getattr(args, k)
            for k in ("n", "n_enqueue", "batch", "concurrency", "latency", "repeat", "smoke")
        },
    }
    document = {"machine": meta, "metrics": {m.key: m.header for m in report.METRICS}, "results": results}
    path = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    print(f"JSON written to {path}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(results) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    return run(args)
