// The HTTP/2 suite's Node.js gRPC server (@grpc/grpc-js, raw Buffers, no generated code):
// `node -e SRC` with @grpc/grpc-js on NODE_PATH, listens on 127.0.0.1 (an ephemeral port,
// printed as the first line) and serves `demo.Greeter`:
//   Say   (unary) answers "hello " + request;
//   Echo  (unary) answers the number of metadata entries it got, in ASCII.
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
const server = new grpc.Server();
server.addService(
  { Say: unary("Say"), Echo: unary("Echo") },
  {
    Say: (call, done) => done(null, Buffer.concat([Buffer.from("hello "), call.request])),
    Echo: (call, done) => done(null, Buffer.from(String(Object.keys(call.metadata.getMap()).length))),
  },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(port);
});
