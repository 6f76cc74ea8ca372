// The Node.js middle service of the linking suite: `node -e SRC DOWNSTREAM_PORT`, prints
// its port, then answers `GET /work?id=N` after a jitter of (N*7919)%9 ms and one call
// `GET /down?id=N` through a keep-alive http.Agent. One thread, one event loop: many
// requests are in flight on it at once.
const http = require("http");
const downPort = Number(process.argv[1]);
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

const server = http.createServer(async (req, res) => {
  const id = Number(new URL(req.url, "http://middle").searchParams.get("id"));
  await new Promise((r) => setTimeout(r, (id * 7919) % 9));
  try {
    await call(id);
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end(`ok ${id}\n`);
  } catch (e) {
    res.writeHead(502, { "Content-Type": "text/plain" });
    res.end(`${e}\n`);
  }
});
server.keepAliveTimeout = 30000;
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
