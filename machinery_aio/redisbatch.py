"""Redis round trips made few: Lua scripts by SHA, and a batcher that pipelines.

:class:`CommandBatcher` sends a command at once when nothing else is on the
wire, so an idle process pays no extra latency. Commands issued while others
are in flight (acks, state writes, publishes from many concurrent tasks)
are collected and sent together as one pipeline; each caller awaits its own
reply.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from .config import Config
from .redisconn import RedisClient, create_redis

__all__ = ["CommandBatcher", "LuaScript", "run_script"]


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
class _Command:
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    script: LuaScript | None = None
    keys: Sequence[Key] = ()
    script_args: Sequence[Value] = ()


class CommandBatcher:
    """Pipelines the commands issued in one event-loop iteration.

    At most ``max_in_flight`` pipelines are on the wire at once; commands
    issued meanwhile wait and go out together in the next one, so under load
    the number of round trips per command falls.
    """

    def __init__(
        self, client: RedisClient, *, max_in_flight: int = 4, max_batch: int = 1000
    ) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._pending: list[_Command] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply; raises its error."""
        if self._in_flight == 0 and not self._pending:
            return await self._direct(args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Command(args, future))
        self._schedule()
        return await future

    async def script(
        self, script: LuaScript, keys: Sequence[Key], args: Sequence[Value] = ()
    ) -> Any:
        """Run one Lua script and return its reply; raises its error."""
        command_args = script.evalsha_args(keys, args)
        if self._in_flight == 0 and not self._pending:
            return await self._direct(command_args, script, keys, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Command(command_args, future, script, keys, args))
        self._schedule()
        return await future

    async def _direct(
        self, args: tuple[Any, ...], script: LuaScript | None = None,
        keys: Sequence[Key] = (), script_args: Sequence[Value] = (),
    ) -> Any:
        """Nothing else is on the wire: send at once, in the caller's task."""
        self._in_flight += 1
        try:
            try:
                return await self.client.execute_command(*args)
            except NoScriptError:
                if script is None:
                    raise
                return await self.client.execute_command(*script.eval_args(keys, script_args))
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule()

    async def drain(self) -> None:
        """Wait until everything queued so far has been answered."""
        while self._pending or self._in_flight:
            tasks = set(self._tasks)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0.001)

    # -- internals -----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            batch = [c for c in batch if not c.future.cancelled()]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Command]) -> None:
        try:
            if len(batch) == 1:
                await self._send_one(batch[0])
            else:
                await self._send_pipeline(batch)
        except BaseException as exc:
            for command in batch:
                _fail(command.future, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule()

    async def _send_one(self, command: _Command) -> None:
        try:
            reply = await self.client.execute_command(*command.args)
        except NoScriptError:
            assert command.script is not None
            reply = await self.client.execute_command(
                *command.script.eval_args(command.keys, command.script_args)
            )
        except Exception as exc:
            _fail(command.future, exc)
            return
        _resolve(command.future, reply)

    async def _send_pipeline(self, batch: list[_Command]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command.args)
        replies = await pipe.execute(raise_on_error=False)
        for command, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and command.script is not None:
                try:
                    reply = await self.client.execute_command(
                        *command.script.eval_args(command.keys, command.script_args)
                    )
                except Exception as exc:
                    reply = exc
            if isinstance(reply, Exception):
                _fail(command.future, reply)
            else:
                _resolve(command.future, reply)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)


class RedisHandle:
    """A Redis client and its command batcher for one URL, both made on first use."""

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config
        self._client: RedisClient | None = None
        self._batcher: CommandBatcher | None = None

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

    async def close(self) -> None:
        """Send what is batched, then close the connections."""
        if self._batcher is not None:
            await self._batcher.drain()
            self._batcher = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
