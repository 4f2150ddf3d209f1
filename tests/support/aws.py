"""moto's server standing in for SQS and DynamoDB: the URLs, the environment that points
AWS clients at it, and the cleanup of what a test made."""

from __future__ import annotations

import os

from machinery_aio import Config
from machinery_aio.drivers.aws.client import Clients, parse_url

MOTO = ("127.0.0.1", 5000, "moto's server (SQS, DynamoDB)")
ENDPOINT = f"http://{MOTO[0]}:{MOTO[1]}"
ACCOUNT = "123456789012"
"""moto's default account."""
SQS_URL = f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/"
DYNAMODB_URL = "https://dynamodb.us-east-1.amazonaws.com"

ENVIRONMENT = {
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_moto() -> None:
    """Point every AWS client of this process and its children at moto (real AWS settings
    already in the environment are replaced: tests never reach AWS itself)."""
    os.environ.update(ENVIRONMENT)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


def aws_settings(config: Config, unique: str) -> None:
    """Tables of the test's own, short polls and a short visibility timeout (a killed
    consumer's messages return after 3 s)."""
    config.dynamodb.task_states_table = f"{unique}_task_states"
    config.dynamodb.group_metas_table = f"{unique}_group_metas"
    config.sqs.wait_time_seconds = 1
    config.sqs.visibility_timeout = 3


async def aws_cleanup(config: Config, unique: str, names: set[str]) -> None:
    """Delete the test's queues (and dead-letter queues) and tables."""
    sqs = Clients(parse_url(SQS_URL, "sqs"))
    dynamodb = Clients(parse_url(DYNAMODB_URL, "dynamodb"))
    try:
        client = await sqs.get()
        listed = await client.list_queues(QueueNamePrefix=unique)
        for url in listed.get("QueueUrls", []):
            await client.delete_queue(QueueUrl=url)
        client = await dynamodb.get()
        tables = await client.list_tables()
        for table in tables.get("TableNames", []):
            if table.startswith(unique):
                await client.delete_table(TableName=table)
    finally:
        await sqs.close()
        await dynamodb.close()
