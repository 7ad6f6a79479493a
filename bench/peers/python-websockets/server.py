"""The classic broadcast chat server on `websockets`: every message to every client."""

import asyncio
import os

from websockets.asyncio.server import broadcast, serve

CLIENTS = set()


async def handler(ws):
    CLIENTS.add(ws)
    try:
        async for message in ws:
            broadcast(CLIENTS, message)
    finally:
        CLIENTS.discard(ws)


async def main():
    port = int(os.environ.get("PORT", "3402"))
    async with serve(handler, "127.0.0.1", port, max_size=2**16):
        print(f"python websockets broadcast server on {port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
