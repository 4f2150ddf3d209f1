"""A user's script that sends one task and returns without closing its server (unless
``--close``): ``python -m tests.support.left_open [--close]`` with the Config in the
environment (BROKER, RESULT_BACKEND, DEFAULT_QUEUE, ...). Prints the task's UUID."""

from __future__ import annotations

import asyncio
import sys

from machinery_aio import Arg, Config, Server, Signature


async def main(close: bool) -> None:
    server = Server(Config.from_env())
    sig = Signature(name="add", args=[Arg(type="int64", value=1)])
    await server.send_task(sig)
    print(sig.uuid, flush=True)
    if close:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main("--close" in sys.argv[1:]))
