// The Node.js middle service of the linking suite: `node -e SRC DOWNSTREAM_PORT [MODE]`,
// prints its port, then answers `GET /work?id=N` after a jitter of (N*7919)%9 ms and:
//   http (default): one call `GET /down?id=N` through a keep-alive http.Agent;
//   fetch-fanout: `GET /down?id=N&part=a` and `…&part=b` in parallel with `fetch` (undici,
//   its own keep-alive pool), awaited together.
// One thread, one event loop: many requests are in flight on it at once.
const http = require("http");
const downPort = Number(process.argv[1]);
const mode = process.argv[2] || "http";
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

function call(id) {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: "127.0.0.1", port: downPort, path: `/down?id=${id}`, agent, timeout: 10000 },
      (res) => {
        res.resume();
        res.on("end", () =>
          res.statusCode === 200 ? resolve() : reject(new Error(`downstream answered ${res.statusCode}`)));
      });
    req.on("timeout", () => req.destroy(new Error("downstream timed out")));
    req.on("error", reject);
  });
}

async function fetchCall(id, part) {
  const r = await fetch(`http://127.0.0.1:${downPort}/down?id=${id}&part=${part}`, {
    signal: AbortSignal.timeout(10000),
  });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`downstream answered ${r.status}`);
}

const server = http.createServer(async (req, res) => {
  const id = Number(new URL(req.url, "http://middle").searchParams.get("id"));
  await new Promise((r) => setTimeout(r, (id * 7919) % 9));
  try {
    if (mode === "fetch-fanout") {
      await Promise.all([fetchCall(id, "a"), fetchCall(id, "b")]);
    } else {
      await call(id);
    }
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end(`ok ${id}\n`);
  } catch (e) {
    res.writeHead(502, { "Content-Type": "text/plain" });
    res.end(`${e}\n`);
  }
});
server.keepAliveTimeout = 30000;
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
