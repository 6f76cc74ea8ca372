# The asyncio middle service of the linking suite: an aiohttp server and one aiohttp
# ClientSession (keep-alive pool). `python3 -c SRC DOWNSTREAM_PORT [MODE]`, prints its
# port, then answers `GET /work?id=N` after a jitter of (N*7919)%9 ms and:
#   plain (default): one call `GET /down?id=N`, awaited in the handler;
#   sequence: `GET /down?id=N&part=a`, more jitter, then `…&part=b`, both in the handler;
#   gather: the same two calls in parallel, each in its own task (`asyncio.gather`).
# One thread, one event loop: many requests are in flight on it at once.
import asyncio
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

DOWN = "http://127.0.0.1:%s/down" % sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else "plain"
session = None


async def call(n, part=None):
    url = "%s?id=%d" % (DOWN, n) + ("&part=%s" % part if part else "")
    async with session.get(url) as r:
        await r.read()
        return r.status


async def work(request):
    n = int(request.query["id"])
    jitter = ((n * 7919) % 9) / 1000
    await asyncio.sleep(jitter)
    if MODE == "plain":
        statuses = [await call(n)]
    elif MODE == "sequence":
        statuses = [await call(n, "a")]
        await asyncio.sleep(jitter / 2)
        statuses.append(await call(n, "b"))
    else:
        statuses = await asyncio.gather(call(n, "a"), call(n, "b"))
    bad = [s for s in statuses if s != 200]
    if bad:
        return web.Response(status=502, text="downstream answered %d\n" % bad[0])
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
