"""The benchmark suite's smoke mode runs end to end and produces a table and a JSON file.

No timing thresholds: only that every figure is there and sane. The Redis row is measured when
machinery-aio's Redis driver exists (on the benchmark's own database, which the suite flushes)
and must otherwise be reported as unavailable rather than failing the run.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_server

ROOT = Path(__file__).resolve().parent.parent
REDIS = os.environ.get("BENCH_SMOKE_REDIS", "redis://127.0.0.1:6379/15")
FIGURES = ["enqueue_one", "enqueue_batch", "drain_1", "p50_ms", "p99_ms", "rss_mib"]


def run_suite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_smoke_run_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    has_redis_driver = importlib.util.find_spec("machinery_aio.drivers.redis.broker") is not None
    if has_redis_driver:
        require_server("127.0.0.1", 6379, "Redis")
    out = tmp_path / "smoke.json"
    proc = run_suite(
        "--smoke", "--broker", REDIS, "--json", str(out), "--only", "machinery-aio/memory,machinery-aio/redis"
    )
    assert proc.returncode == 0, proc.stderr
    assert "drain 1 proc/s" in proc.stdout
    assert "machinery-aio/memory" in proc.stdout
    document = json.loads(out.read_text())
    assert document["machine"]["cores"] >= 1
    memory = document["results"]["machinery-aio/memory"]
    assert memory["status"] == "ok", memory
    for key in FIGURES:
        assert memory["median"][key] > 0, key
    assert memory["median"]["cpu_us_per_task"] > 0
    assert memory["median"]["drain_2"] is None  # one process only: the queue lives in it
    assert memory["median"]["server_cpu_us_per_task"] is None  # no server to measure
    redis = document["results"]["machinery-aio/redis"]
    if has_redis_driver:
        assert redis["status"] == "ok", redis
        for key in [*FIGURES, "drain_2"]:
            assert redis["median"][key] > 0, key
        assert redis["median"]["cpu_us_per_task"] >= 0
        assert redis["median"]["server_cpu_us_per_task"] > 0  # redis-server did some work
    else:
        assert redis["status"].startswith("unavailable:"), redis
        assert "machinery-aio/redis: unavailable" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nosuchqueue"], "unknown target(s) nosuchqueue"),
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "10", "--concurrency", "50"], "--n must be at least twice --concurrency"),
    ],
)
def test_bad_arguments_are_refused_clearly(args: list[str], message: str) -> None:
    proc = run_suite(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_benchmarks_never_import_the_tests() -> None:
    """benchmarks/ runs on its own (a user's checkout, CI's benchmark job): no test helpers."""
    sources = sorted(
        path
        for path in (ROOT / "benchmarks").rglob("*.py")
        if not any(part.startswith(".") or part == "results" for part in path.relative_to(ROOT).parts)
    )
    assert sources
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] != "tests", f"{path.relative_to(ROOT)} imports {name}"
