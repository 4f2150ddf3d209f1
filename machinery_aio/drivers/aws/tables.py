"""The DynamoDB tables: Go's key schema, created with a TTL when missing (unless turned off)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from ...config import ConfigError

__all__ = ["TTL_ATTRIBUTE", "ensure_table"]

TTL_ATTRIBUTE = "TTL"
"""Unix seconds after which DynamoDB may delete the item (Go writes it too)."""


async def ensure_table(client: Any, name: str, key: str, create: bool) -> None:
    """Make sure table ``name`` (hash key ``key``, a string) exists; use it as it is if it does."""
    try:
        await client.describe_table(TableName=name)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    if not create:
        raise ConfigError(
            f"DynamoDB table {name!r} does not exist; create it (hash key {key!r}, a string) "
            "or set dynamodb.create_tables"
        )
    try:
        await client.create_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":  # made meanwhile
            raise
    await client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    try:
        await client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    except ClientError as exc:
        if "already enabled" not in str(exc).lower():
            raise
