// The HTTP/2 suite's Node.js gRPC server (@grpc/grpc-js, raw Buffers, no generated code):
// `node -e SRC` with @grpc/grpc-js on NODE_PATH, listens on 127.0.0.1 (an ephemeral port,
// printed as the first line) and serves `demo.Greeter`:
//   Say   (unary) answers "hello " + request;
//   Echo  (unary) answers the number of metadata entries it got, in ASCII;
//   Relay (unary) with GRPC_RELAY_PORT set: waits 0-4 ms (work before the call, so that
//         concurrent handlers call downstream in any order), calls GRPC_RELAY_METHOD (Say
//         or Relay) of the server on 127.0.0.1:GRPC_RELAY_PORT with the same request and
//         x-request-id, over one client (one HTTP/2 connection), and answers its answer
//         (or its status).
const grpc = require("@grpc/grpc-js");

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
const relayPort = process.env.GRPC_RELAY_PORT;
const relayMethod = process.env.GRPC_RELAY_METHOD || "Say";
const downstream = relayPort
  ? new (grpc.makeGenericClientConstructor({ [relayMethod]: unary(relayMethod) }, "Greeter"))(
      `127.0.0.1:${relayPort}`,
      grpc.credentials.createInsecure(),
      { "grpc.enable_http_proxy": 0 },
    )
  : null;

function relay(call, done) {
  if (!downstream) return done({ code: grpc.status.UNIMPLEMENTED, details: "GRPC_RELAY_PORT is not set" });
  const md = new grpc.Metadata();
  for (const id of call.metadata.get("x-request-id")) md.add("x-request-id", id);
  setTimeout(() => {
    downstream[relayMethod](call.request, md, { deadline: Date.now() + 20000 }, (err, resp) => done(err, resp));
  }, Math.random() * 4);
}

const server = new grpc.Server();
server.addService(
  { Say: unary("Say"), Echo: unary("Echo"), Relay: unary("Relay") },
  {
    Say: (call, done) => done(null, Buffer.concat([Buffer.from("hello "), call.request])),
    Echo: (call, done) => done(null, Buffer.from(String(Object.keys(call.metadata.getMap()).length))),
    Relay: relay,
  },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(port);
});
