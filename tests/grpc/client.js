// The HTTP/2 suite's Node.js gRPC client (@grpc/grpc-js, raw Buffers, no generated code):
// `node -e SRC PORT MODE CALLS CONCURRENCY` with @grpc/grpc-js on NODE_PATH, against
// `demo.Greeter` (server.js, or server.py: same methods). All calls go over ONE client
// (one channel, one HTTP/2 connection), CONCURRENCY of them in flight at once; call n
// (1..CALLS) sends b"id=<n>". MODE:
//   say       Say, expects OK and "hello id=<n>";
//   metadata  Echo with 40 distinct metadata keys `x-meta-<n>-<k>` with distinct values of
//             about 90 bytes: Node's HTTP/2 (nghttp2) indexes them, so one call's headers
//             overflow HPACK's default 4 KiB dynamic table and evict; expects OK and a
//             count of at least 40.
// Prints one line, `calls=N ok=K codes=OK:K,NOT_FOUND:F,DEADLINE_EXCEEDED:D messages=M
// conns=C` (as client.py: any other status code is appended to codes; M: response messages
// received; C: TCP connections to PORT this process had open, sampled from /proc), then
// exits 0 when every call ended as expected, else prints the first unexpected outcomes and
// exits 1.
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const port = Number(process.argv[1]);
const mode = process.argv[2];
const calls = Number(process.argv[3]);
const concurrency = Number(process.argv[4]);
if (!["say", "metadata"].includes(mode)) {
  console.error(`unknown mode ${mode}: say or metadata`);
  process.exit(2);
}

const raw = (b) => b;
const unary = (name) => ({
  path: `/demo.Greeter/${name}`,
  requestStream: false,
  responseStream: false,
  requestSerialize: raw,
  requestDeserialize: raw,
  responseSerialize: raw,
  responseDeserialize: raw,
});
const Greeter = grpc.makeGenericClientConstructor({ Say: unary("Say"), Echo: unary("Echo") }, "Greeter");
const client = new Greeter(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
  "grpc.enable_http_proxy": 0,
});

// Local addresses of this process's TCP sockets whose peer port is `port`.
const conns = new Set();
function sampleConnections() {
  const inodes = new Set();
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    try {
      const link = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (link.startsWith("socket:[")) inodes.add(link.slice(8, -1));
    } catch {}
  }
  for (const table of ["/proc/self/net/tcp", "/proc/self/net/tcp6"]) {
    let rows = [];
    try {
      rows = fs.readFileSync(table, "utf8").trim().split("\n").slice(1);
    } catch {}
    for (const row of rows) {
      const cols = row.trim().split(/\s+/);
      if (inodes.has(cols[9]) && parseInt(cols[2].split(":").pop(), 16) === port) conns.add(cols[1]);
    }
  }
}
const sampler = setInterval(sampleConnections, 10);

const codes = { OK: 0, NOT_FOUND: 0, DEADLINE_EXCEEDED: 0 };
let messages = 0;
const problems = [];

function one(n) {
  const req = Buffer.from(`id=${n}`);
  const md = new grpc.Metadata();
  // The id in metadata too: the tests match spans to calls by x-request-id.
  md.add("x-request-id", String(n));
  if (mode === "metadata") {
    for (let k = 0; k < 40; k++) md.add(`x-meta-${n}-${k}`, `value-${n}-${k}-` + "m".repeat(80));
  }
  const options = { deadline: Date.now() + 20000 };
  return new Promise((resolve) => {
    const method = mode === "metadata" ? "Echo" : "Say";
    client[method](req, md, options, (err, resp) => {
      sampleConnections();
      if (err) {
        const code = grpc.status[err.code] || String(err.code);
        codes[code] = (codes[code] || 0) + 1;
        problems.push(`id=${n} ${mode}: ${code} ${err.details}`);
        return resolve();
      }
      codes.OK++;
      messages++;
      const ok =
        mode === "metadata" ? Number(resp.toString()) >= 40 : resp.equals(Buffer.concat([Buffer.from("hello "), req]));
      if (!ok) problems.push(`id=${n} ${mode}: answer ${JSON.stringify(resp.toString().slice(0, 80))}`);
      resolve();
    });
  });
}

(async () => {
  let next = 1;
  async function worker() {
    while (next <= calls) await one(next++);
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, calls)) }, worker));
  clearInterval(sampler);
  sampleConnections();
  client.close();
  const codeList = Object.entries(codes).map(([c, k]) => `${c}:${k}`).join(",");
  console.log(`calls=${calls} ok=${codes.OK} codes=${codeList} messages=${messages} conns=${conns.size}`);
  for (const p of problems.slice(0, 20)) console.log(`unexpected: ${p}`);
  process.exit(problems.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
