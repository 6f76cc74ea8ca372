# The asyncio middle service of the linking suite: an aiohttp server and one aiohttp
# ClientSession (keep-alive pool). `python3 -c SRC DOWNSTREAM_PORT`, prints its port, then
# answers `GET /work?id=N` after a jitter of (N*7919)%9 ms and one call `GET /down?id=N`.
# One thread, one event loop: many requests are in flight on it at once.
import asyncio
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

DOWN = "http://127.0.0.1:%s/down" % sys.argv[1]
session = None


async def work(request):
    n = int(request.query["id"])
    await asyncio.sleep(((n * 7919) % 9) / 1000)
    async with session.get("%s?id=%d" % (DOWN, n)) as r:
        await r.read()
        if r.status != 200:
            return web.Response(status=502, text="downstream answered %d\n" % r.status)
    return web.Response(text="ok %d\n" % n)


async def main():
    global session
    session = ClientSession(connector=TCPConnector(limit=16), timeout=ClientTimeout(total=10))
    app = web.Application()
    app.router.add_get("/work", work)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
