"""``machinery-aio inspect pending|dead`` and ``purge`` on SQS (pending is a count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from machinery_aio import Arg, Config, Signature
from machinery_aio.drivers import create_broker

ROOT = Path(__file__).resolve().parents[3]


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "TASK_STATES_TABLE": config.dynamodb.task_states_table,
        "GROUP_METAS_TABLE": config.dynamodb.group_metas_table,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "machinery_aio", *args, "--loglevel", "ERROR"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_inspect_and_purge(aws_config: Config, unique: str) -> None:
    broker = create_broker(aws_config)
    sigs = [Signature(uuid=f"task_{unique}_{i}", name="add", args=[Arg.of(i)]) for i in range(3)]
    try:
        await broker.connect()
        await broker.publish(Signature(uuid=f"task_{unique}_bad", name="add"))
        consumer = broker.consumer(aws_config.default_queue, prefetch=1, tag="cli")
        [bad] = await consumer.fetch(1)
        await consumer.dead_letter(bad, "message is not valid JSON")
        await consumer.close()
        await broker.publish_many(sigs)
    finally:
        await broker.close()

    pending = cli(aws_config, "inspect", "pending")
    assert pending.returncode == 0, pending.stderr
    assert json.loads(pending.stdout) == []  # SQS counts but cannot list
    assert f"about 3 pending in '{aws_config.default_queue}'" in pending.stderr

    dead = cli(aws_config, "inspect", "dead")
    assert dead.returncode == 0, dead.stderr
    [letter] = json.loads(dead.stdout)
    assert json.loads(letter["body"])["UUID"] == f"task_{unique}_bad"
    assert (letter["reason"], letter["queue"]) == ("message is not valid JSON", aws_config.default_queue)

    purged = cli(aws_config, "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 3 tasks" in purged.stdout
