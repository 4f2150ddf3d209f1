"""Redis round trips made few: Lua scripts by SHA, and a batcher that pipelines.

:class:`CommandBatcher` sends a command at once when nothing else is on the
wire, so an idle process pays no extra latency. Commands issued while others
are in flight (acks, state writes, publishes from many concurrent tasks)
are collected and sent together as one pipeline; each caller awaits its own
reply.

On a single Redis server (plain, TLS, socket or Sentinel) the batcher keeps a
few connections of its own and talks over them directly: one write of every
packed command, then one read per reply, under one deadline for the whole
round trip. redis-py's ``Pipeline`` costs three to four times as much CPU per
command (a timeout scope and several coroutine frames per reply), which
dominated a worker's profile. On a Redis Cluster, where commands must be
routed by slot, the batch goes through the cluster client's pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config import Config
from .connection import RedisClient, create_redis

__all__ = ["Command", "CommandBatcher", "LuaScript", "RedisHandle", "run_script"]


Key = str | bytes
Value = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script called by SHA; sent in full only when Redis does not know it yet."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def evalsha_args(self, keys: Sequence[Key], args: Sequence[Value]) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval_args(self, keys: Sequence[Key], args: Sequence[Value]) -> tuple[Any, ...]:
        return ("EVAL", self.source, len(keys), *keys, *args)


async def run_script(
    client: RedisClient, script: LuaScript, keys: Sequence[Key], args: Sequence[Value] = ()
) -> Any:
    """Run ``script`` once (EVALSHA, falling back to EVAL when the script is not cached)."""
    try:
        return await client.execute_command(*script.evalsha_args(keys, args))
    except NoScriptError:
        return await client.execute_command(*script.eval_args(keys, args))


@dataclass(slots=True)
class Command:
    """One command for :meth:`CommandBatcher.execute_all`: ``Command.of("SET", k, v)`` or
    ``Command.lua(script, keys, args)``."""

    args: tuple[Any, ...]
    script: LuaScript | None = None
    keys: Sequence[Key] = ()
    script_args: Sequence[Value] = ()

    @classmethod
    def of(cls, *args: Any) -> Command:
        return cls(args)

    @classmethod
    def lua(cls, script: LuaScript, keys: Sequence[Key], args: Sequence[Value] = ()) -> Command:
        return cls(script.evalsha_args(keys, args), script, keys, args)

    def fallback(self) -> tuple[Any, ...] | None:
        """The EVAL to send when Redis answered NOSCRIPT to this command's EVALSHA."""
        return None if self.script is None else self.script.eval_args(self.keys, self.script_args)


class _Group:
    """Several commands sent back to back (never split across round trips), one waiter."""

    __slots__ = ("remaining", "replies")

    def __init__(self, size: int) -> None:
        self.replies: list[Any] = [None] * size
        self.remaining = size


class _Pending:
    """A command waiting for its reply; ``waiter`` is its caller's future (its group's for
    :meth:`CommandBatcher.execute_all`)."""

    __slots__ = ("command", "done", "group", "index", "waiter")

    def __init__(
        self,
        command: Command,
        waiter: asyncio.Future[Any],
        group: _Group | None = None,
        index: int = 0,
    ) -> None:
        self.command = command
        self.waiter = waiter
        self.group = group
        self.index = index
        self.done = False

    def settle(self, reply: Any) -> None:
        """Hand over the reply (an Exception instance for an error reply)."""
        self.done = True
        group = self.group
        if group is None:
            _resolve(self.waiter, reply)
            return
        group.replies[self.index] = reply
        group.remaining -= 1
        if group.remaining == 0:
            errors = [r for r in group.replies if isinstance(r, Exception)]
            _resolve(self.waiter, errors[0] if errors else group.replies)

    def fail(self, exc: BaseException) -> None:
        self.done = True
        if not self.waiter.done():
            if isinstance(exc, asyncio.CancelledError):
                self.waiter.cancel()
            else:
                self.waiter.set_exception(exc)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        if isinstance(value, Exception):
            future.set_exception(value)
        else:
            future.set_result(value)


class CommandBatcher:
    """Pipelines the commands issued in one event-loop iteration.

    At most ``max_in_flight`` pipelines are on the wire at once; commands
    issued meanwhile wait and go out together in the next one, so under load
    the number of round trips per command falls. A batch cut short by a lost
    connection is re-sent from its first unanswered command, as the client's
    retry policy allows (redis-py itself would re-send the whole pipeline).
    """

    def __init__(self, client: RedisClient, *, max_in_flight: int = 4, max_batch: int = 1000) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._wire: _Wire = _ClusterWire(client) if isinstance(client, RedisCluster) else _DirectWire(client)
        self._pending: list[_Pending] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply; raises its error."""
        return await self.run(Command(args))

    async def script(self, script: LuaScript, keys: Sequence[Key], args: Sequence[Value] = ()) -> Any:
        """Run one Lua script and return its reply; raises its error."""
        return await self.run(Command.lua(script, keys, args))

    async def run(self, command: Command) -> Any:
        """Send ``command`` and return its reply; raises its error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._submit([_Pending(command, future)])
        return await future

    async def execute_all(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in order, in one round trip, on one connection; return their
        replies. Raises the first error reply once every command has been answered."""
        if not commands:
            return []
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group = _Group(len(commands))
        await self._submit([_Pending(c, future, group, i) for i, c in enumerate(commands)])
        result: list[Any] = await future
        return result

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """Queue ``command`` for the next pipeline and return its reply's future at once.

        Commands queued in the same event-loop iteration go out together, in order.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(command, future))
        self._schedule()
        return future

    async def _submit(self, items: list[_Pending]) -> None:
        if self._in_flight == 0 and not self._pending:
            # Nothing else is on the wire: send at once, in the caller's task.
            self._in_flight += 1
            try:
                await self._round_trip(items)
            finally:
                self._in_flight -= 1
                if self._pending:
                    self._schedule()
        else:
            self._pending.extend(items)
            self._schedule()

    async def drain(self) -> None:
        """Wait until everything queued so far has been answered."""
        while self._pending or self._in_flight:
            tasks = set(self._tasks)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        """Send what is queued, then close the batcher's own connections."""
        await self.drain()
        await self._wire.close()

    # -- internals -----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            pending = self._pending
            cut = min(self.max_batch, len(pending))
            while (
                cut < len(pending)
                and pending[cut].group is not None
                and pending[cut].group is pending[cut - 1].group
            ):
                cut += 1  # a group goes out whole
            batch = [p for p in pending[:cut] if not p.waiter.done()]  # not given up on
            del pending[:cut]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            await self._round_trip(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule()

    async def _round_trip(self, batch: list[_Pending]) -> None:
        """Send ``batch`` and settle every item, or fail the ones left unanswered."""
        remaining = batch

        async def attempt() -> None:
            nonlocal remaining
            try:
                await self._wire.send(remaining)
            finally:
                remaining = [p for p in remaining if not p.done]

        async def nothing(error: Exception) -> None:
            return None  # the connection is already closed; the next send reconnects

        try:
            retry = self._wire.retry
            if retry is None:
                await attempt()
            else:
                await retry.call_with_retry(attempt, nothing)
        except BaseException as exc:
            for item in remaining:
                item.fail(exc)
            if not isinstance(exc, Exception):
                raise


class _Wire:
    retry: Any = None
    """redis-py's ``Retry`` for re-sending after a lost connection, or None."""

    async def send(self, batch: list[_Pending]) -> None:
        """Send ``batch`` and settle each item as its reply arrives.

        On a lost connection, raises redis' ConnectionError or TimeoutError; the
        items answered before it are settled, the rest are not.
        """
        raise NotImplementedError

    async def close(self) -> None:
        return None


class _DirectWire(_Wire):
    """Up to ``max_in_flight`` connections of the batcher's own, talked to directly."""

    def __init__(self, client: Redis) -> None:
        self.pool = client.connection_pool
        kwargs = self.pool.connection_kwargs
        self.retry = kwargs.get("retry")
        self.timeout: float | None = kwargs.get("socket_timeout")
        self._kwargs = {**kwargs, "socket_timeout": None}  # one deadline per round trip instead
        self._idle: list[Any] = []
        self._all: list[Any] = []

    async def send(self, batch: list[_Pending]) -> None:
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = self.pool.connection_class(**self._kwargs)
            self._all.append(conn)
        try:
            await self._exchange(conn, batch)
        except TimeoutError:
            # The deadline interrupted a read or write; redis-py has closed the connection.
            raise RedisTimeoutError("Timeout talking to Redis") from None
        finally:
            self._idle.append(conn)

    async def _exchange(self, conn: Any, batch: list[_Pending]) -> None:
        as_eval: list[tuple[_Pending, tuple[Any, ...]]] = []
        async with asyncio.timeout(self.timeout):
            # one write (one system call) for the whole batch
            await conn.send_packed_command(b"".join(conn.pack_commands([p.command.args for p in batch])))
            for item in batch:
                reply = await _read(conn)
                fallback = item.command.fallback() if isinstance(reply, NoScriptError) else None
                if fallback is None:
                    item.settle(reply)
                else:
                    as_eval.append((item, fallback))
            if as_eval:  # Redis lost its script cache (a restart, SCRIPT FLUSH): one more trip
                await conn.send_packed_command(b"".join(conn.pack_commands([a for _, a in as_eval])))
                for item, _ in as_eval:
                    item.settle(await _read(conn))

    async def close(self) -> None:
        conns, self._all, self._idle = self._all, [], []
        for conn in conns:
            await conn.disconnect()


async def _read(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


class _ClusterWire(_Wire):
    """Through the cluster client's pipeline, which routes each command to its slot."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    async def send(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:  # the client retries a lone command after a lost connection
            command = batch[0].command
            try:
                if command.script is None:
                    reply = await self.client.execute_command(*command.args)
                else:
                    reply = await run_script(self.client, command.script, command.keys, command.script_args)
            except ResponseError as exc:
                reply = exc
            batch[0].settle(reply)
            return
        pipe = self.client.pipeline(transaction=False)
        for item in batch:
            pipe.execute_command(*item.command.args)
        replies = await pipe.execute(raise_on_error=False)
        for item, reply in zip(batch, replies, strict=True):
            fallback = item.command.fallback() if isinstance(reply, NoScriptError) else None
            if fallback is not None:
                try:
                    reply = await self.client.execute_command(*fallback)
                except Exception as exc:
                    reply = exc
            item.settle(reply)


class RedisHandle:
    """A Redis client and its command batcher for one URL, both made on first use.

    :meth:`shared` gives a Server's broker and backend on the same URL one handle,
    so a task's state writes, publishes and acks share pipelines (fewer round trips
    and system calls); it closes when the last of its owners closes it.
    """

    _registry: ClassVar[weakref.WeakValueDictionary[tuple[str, int], RedisHandle]] = (
        weakref.WeakValueDictionary()
    )

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config
        self._client: RedisClient | None = None
        self._batcher: CommandBatcher | None = None
        self._owners: set[int] = set()
        self._reached = False

    @classmethod
    def shared(cls, url: str, config: Config, owner: object) -> RedisHandle:
        """The handle for ``url`` under this very ``config`` object, with ``owner`` added."""
        key = (url, id(config))
        handle = cls._registry.get(key)
        if handle is None or handle.config is not config:
            handle = cls._registry[key] = cls(url, config)
        handle.attach(owner)
        return handle

    def attach(self, owner: object) -> None:
        """``owner`` uses this handle (again): the connections stay until it closes."""
        self._owners.add(id(owner))

    async def reach(self) -> None:
        """PING once, so that a Redis that cannot be reached is reported at connect time."""
        if not self._reached:
            await self.client.ping()
            self._reached = True

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            self._client = create_redis(self.url, self.config)
        return self._client

    @property
    def batcher(self) -> CommandBatcher:
        if self._batcher is None:
            self._batcher = CommandBatcher(self.client)
        return self._batcher

    async def close(self, owner: object | None = None) -> None:
        """Send what is batched; close the connections once no other owner uses them."""
        if owner is not None:
            self._owners.discard(id(owner))
            if self._owners:
                if self._batcher is not None:
                    await self._batcher.drain()
                return
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            await batcher.close()
        if self._client is not None:
            client, self._client = self._client, None
            self._reached = False
            await client.aclose()
