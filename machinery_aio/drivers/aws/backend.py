"""The DynamoDB result backend: Go Machinery's ``task_states`` and ``group_metas`` tables."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from ...config import Config
from ...gotime import ZERO_TIME, format_time, now
from ...log import get_logger
from ...signature import Signature
from ...state import GroupMeta, State, TaskState
from ..backend import ResultBackend, keep_origin
from .client import Clients, parse_url
from .items import expired, group_item, group_meta, results_attribute, task_state
from .tables import ensure_table

__all__ = ["DynamoDBBackend"]

logger = get_logger("machinery_aio.drivers.aws")

BATCH_GET = 100
"""BatchGetItem's most keys per call."""
FIRST_POLL = 0.005
"""Seconds before the second read while waiting for a result; it grows 1.5x per read..."""
LAST_POLL = 0.2
"""...up to this: a waiting result costs at most 5 reads a second."""

FRESH_GROUPS = 1000
"""Group items kept between a member's completion update and its chord check."""
COMPLETED = "CompletedTaskUUIDs"
"""A string set on the group meta: members whose final state a Python worker stored."""
_ZERO_TEXT = format_time(ZERO_TIME)
_NAMES = {"#s": "State", "#r": "Results", "#e": "Error", "#t": "TTL", "#n": "TaskName", "#c": "CreatedAt"}


class DynamoDBBackend(ResultBackend):
    """``https://dynamodb.<region>.amazonaws.com``: states in ``task_states`` under ``TaskUUID``,
    groups in ``group_metas`` under ``GroupUUID``; reads are strongly consistent."""

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.clients = Clients(parse_url(self.url, "dynamodb"))
        self.states_table = config.dynamodb.task_states_table
        self.groups_table = config.dynamodb.group_metas_table
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._fresh_groups: dict[str, dict[str, Any]] = {}
        """Group items returned by this worker's last completion update, read once."""

    async def connect(self) -> None:
        await self._client()

    async def close(self) -> None:
        await self.clients.close()

    async def _client(self) -> Any:
        client = await self.clients.get()
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    create = self.config.dynamodb.create_tables
                    await ensure_table(client, self.states_table, "TaskUUID", create)
                    await ensure_table(client, self.groups_table, "GroupUUID", create)
                    self._ready = True
        return client

    async def _call(self, operation: str, **request: Any) -> Any:
        """One DynamoDB call; a table that vanished (deleted, an emulator restarted) is made
        again (when allowed) and the call tried once more."""
        client = await self._client()
        try:
            return await getattr(client, operation)(**request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        self._ready = False
        client = await self._client()
        return await getattr(client, operation)(**request)

    def _ttl(self) -> int:
        return int(time.time()) + self.expires_in

    # -- writes ------------------------------------------------------------------------------

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """One write per task: several states of one task given together (RECEIVED then
        STARTED) are stored as the last of them, keeping the origin of the earlier ones."""
        last: dict[str, TaskState] = {}
        for state in states:
            last[state.task_uuid] = keep_origin(state, last.get(state.task_uuid))
        await asyncio.gather(*(self._write(state) for state in last.values()))

    async def set_final_state(self, signature: Signature, state: TaskState) -> None:
        """Store SUCCESS or FAILURE; a chord member also adds its UUID to the group's
        ``CompletedTaskUUIDs`` set (ignored by Go), so that checking whether the group is
        complete reads one item instead of every member's state."""
        await self._write(state)
        if not signature.group_uuid or signature.chord_callback is None:
            return
        try:
            response = await self._call(
                "update_item",
                TableName=self.groups_table,
                Key={"GroupUUID": {"S": signature.group_uuid}},
                UpdateExpression="ADD #d :u",
                ConditionExpression="attribute_exists(#g)",
                ExpressionAttributeNames={"#d": COMPLETED, "#g": "GroupUUID"},
                ExpressionAttributeValues={":u": {"SS": [state.task_uuid]}},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:  # no group meta (expired), or a group too big for one item
            logger.debug("group %s: completed set not updated: %s", signature.group_uuid, exc)
            return
        if len(self._fresh_groups) > FRESH_GROUPS:
            self._fresh_groups.clear()
        self._fresh_groups[signature.group_uuid] = response["Attributes"]

    async def _write(self, state: TaskState) -> None:
        """PENDING replaces the item (as Go's PutItem); later states update it, keeping the stored
        ``TaskName`` and ``CreatedAt`` when they have none (Go's constructors leave them empty)."""
        values: dict[str, Any] = {
            ":s": {"S": state.state.value},
            ":r": results_attribute(state.results),
            ":e": {"S": state.error},
            ":t": {"N": str(self._ttl())},
        }
        if state.state is State.PENDING:
            item = {
                "TaskUUID": {"S": state.task_uuid},
                "TaskName": {"S": state.task_name},
                "State": values[":s"],
                "Results": values[":r"],
                "Error": values[":e"],
                "CreatedAt": {"S": format_time(state.created_at)},
                "TTL": values[":t"],
            }
            await self._call("put_item", TableName=self.states_table, Item=item)
            return
        sets = ["#s = :s", "#r = :r", "#e = :e", "#t = :t"]
        values[":n"] = {"S": state.task_name}
        sets.append("#n = :n" if state.task_name else "#n = if_not_exists(#n, :n)")
        if state.created_at == ZERO_TIME:
            values[":c"] = {"S": _ZERO_TEXT}
            sets.append("#c = if_not_exists(#c, :c)")
        else:
            values[":c"] = {"S": format_time(state.created_at)}
            sets.append("#c = :c")
        await self._call(
            "update_item",
            TableName=self.states_table,
            Key={"TaskUUID": {"S": state.task_uuid}},
            UpdateExpression="SET " + ", ".join(sets),
            ExpressionAttributeNames=_NAMES,
            ExpressionAttributeValues=values,
        )

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        await self._call("put_item", TableName=self.groups_table, Item=group_item(meta, self._ttl()))

    # -- reads -------------------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        response = await self._call(
            "get_item", TableName=self.states_table, Key={"TaskUUID": {"S": task_uuid}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None or expired(item, time.time()):
            return None
        return task_state(item)

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """BatchGetItem, 100 keys a call, strongly consistent, answered in the order asked."""
        wanted = list(dict.fromkeys(task_uuids))
        found: dict[str, TaskState] = {}
        chunks = [wanted[i : i + BATCH_GET] for i in range(0, len(wanted), BATCH_GET)]
        for items in await asyncio.gather(*(self._batch_get(chunk) for chunk in chunks)):
            clock = time.time()
            for item in items:
                if not expired(item, clock):
                    state = task_state(item)
                    found[state.task_uuid] = state
        return [found.get(u) for u in task_uuids]

    async def _batch_get(self, uuids: list[str]) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            self.states_table: {"Keys": [{"TaskUUID": {"S": u}} for u in uuids], "ConsistentRead": True}
        }
        items: list[dict[str, Any]] = []
        pause = 0.01
        while request:
            response = await self._call("batch_get_item", RequestItems=request)
            items += response.get("Responses", {}).get(self.states_table, [])
            request = response.get("UnprocessedKeys") or {}
            if request:  # throttled: try the rest again shortly
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
        return items

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        response = await self._call(
            "get_item", TableName=self.groups_table, Key={"GroupUUID": {"S": group_uuid}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None or expired(item, time.time()):
            return None
        return group_meta(item)

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """Members in ``CompletedTaskUUIDs`` are final; the others (run by Go workers, or not
        yet final) are read one by one, stopping at the first that is not final."""
        item = self._fresh_groups.pop(group_uuid, None)
        if item is None:
            response = await self._call(
                "get_item",
                TableName=self.groups_table,
                Key={"GroupUUID": {"S": group_uuid}},
                ConsistentRead=True,
            )
            item = response.get("Item")
            if item is None or expired(item, time.time()):
                return False
        meta = group_meta(item)
        done = set(item.get(COMPLETED, {}).get("SS", ()))
        if len(meta.task_uuids) != group_task_count:
            return False
        for task_uuid in meta.task_uuids:
            if task_uuid in done:
                continue
            state = await self.get_state(task_uuid)
            if state is None or not state.is_completed():
                return False
        return True

    async def trigger_chord(self, group_uuid: str) -> bool:
        """A conditional update (``ChordTriggered`` false -> true): one caller wins, whichever
        process it is in (Go's read-then-write check is racy)."""
        try:
            await self._call(
                "update_item",
                TableName=self.groups_table,
                Key={"GroupUUID": {"S": group_uuid}},
                UpdateExpression="SET #c = :t",
                ConditionExpression="attribute_exists(#g) AND #c = :f",
                ExpressionAttributeNames={"#c": "ChordTriggered", "#g": "GroupUUID"},
                ExpressionAttributeValues={":t": {"BOOL": True}, ":f": {"BOOL": False}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        """DynamoDB cannot notify: read again after 5 ms, then 1.5x longer each time, at most
        every 200 ms."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = FIRST_POLL
        while True:
            state = await self.get_state(task_uuid)
            if state is not None and state.is_completed():
                return state
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
                await asyncio.sleep(min(pause, left))
            else:
                await asyncio.sleep(pause)
            pause = min(LAST_POLL, pause * 1.5)
