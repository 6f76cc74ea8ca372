// The benchmark's gRPC load generator (@grpc/grpc-js on NODE_PATH, raw Buffers): unary
// `demo.Greeter/Say` calls (a 16-byte request) on ONE channel, so every call is a stream of
// one HTTP/2 connection, as gRPC clients run.
//   node -e SRC saturate PORT CONCURRENCY SECONDS
//       closed loop: CONCURRENCY calls in flight for SECONDS;
//   node -e SRC rate PORT RATE SECONDS
//       open loop: call i is due at start + i/RATE; each millisecond tick starts every call
//       due, and a call's latency runs from when it was due (coordinated omission
//       corrected), whatever was in flight.
// Prints one JSON line: {"calls":N,"ok":K,"errors":E,"seconds":S,"callsPerSec":R,
// "p50Us":…,"p99Us":…} (calls completed within the window; latencies of those).
const grpc = require("@grpc/grpc-js");

const [mode, port, amount, seconds] = [
  process.argv[1],
  Number(process.argv[2]),
  Number(process.argv[3]),
  Number(process.argv[4]),
];
if (!["saturate", "rate"].includes(mode) || !(port > 0) || !(amount > 0) || !(seconds > 0)) {
  console.error("usage: saturate PORT CONCURRENCY SECONDS | rate PORT RATE SECONDS");
  process.exit(2);
}
const raw = (b) => b;
const Greeter = grpc.makeGenericClientConstructor(
  {
    Say: {
      path: "/demo.Greeter/Say",
      requestStream: false,
      responseStream: false,
      requestSerialize: raw,
      requestDeserialize: raw,
      responseSerialize: raw,
      responseDeserialize: raw,
    },
  },
  "Greeter",
);
const client = new Greeter(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
  "grpc.enable_http_proxy": 0,
});
const request = Buffer.from("benchmark-call-1");
const latencies = [];
let ok = 0;
let errors = 0;
let open = true;
const now = () => Number(process.hrtime.bigint()) / 1e3; // µs

function call(due, next) {
  client.Say(request, (err) => {
    if (!open) return;
    if (err) errors++;
    else ok++;
    latencies.push(now() - due);
    if (next) next();
  });
}

function report(start) {
  const elapsed = (now() - start) / 1e6;
  latencies.sort((a, b) => a - b);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : 0);
  console.log(
    JSON.stringify({
      calls: ok + errors,
      ok,
      errors,
      seconds: elapsed,
      callsPerSec: (ok + errors) / elapsed,
      p50Us: pct(0.5),
      p99Us: pct(0.99),
    }),
  );
  client.close();
  process.exit(0);
}

client.waitForReady(Date.now() + 10000, (err) => {
  if (err) {
    console.error(`no gRPC server on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  const start = now();
  const end = start + seconds * 1e6;
  setTimeout(() => {
    open = false;
    report(start);
  }, seconds * 1000);
  if (mode === "saturate") {
    const loop = () => {
      if (open && now() < end) call(now(), loop);
    };
    for (let i = 0; i < amount; i++) loop();
  } else {
    const interval = 1e6 / amount;
    let sent = 0;
    const tick = () => {
      if (!open) return;
      const t = now();
      while (start + sent * interval <= t && start + sent * interval < end) {
        call(start + sent * interval, null);
        sent++;
      }
      setTimeout(tick, 1);
    };
    tick();
  }
});
