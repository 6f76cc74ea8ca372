# The HTTP/2 suite's Python gRPC server (grpcio, no generated code: raw bytes in and out).
# `python3 -c SRC`, listens on 127.0.0.1 (an ephemeral port, printed as the first line) and
# serves `demo.Greeter` from a pool of 16 threads:
#   Say    (unary)            answers b"hello " + request;
#   Fail   (unary)            aborts with NOT_FOUND, details "no such greeting";
#   Slow   (unary)            answers b"slow " + request after 2 s (for a client deadline;
#                             it stops waiting early once the client has cancelled);
#   Count  (server streaming) the request's last space-separated token is an ASCII integer
#                             N ("5", "id=3 5"): answers N messages b"n=1" ... b"n=N";
#   Big    (unary)            answers 300000 bytes (b"big " + request + b" " padded with
#                             b"x"): many HTTP/2 frames of 16 KiB, more than the 64 KiB
#                             initial window;
#   Echo   (unary)            answers the number of invocation metadata entries it got,
#                             in ASCII;
#   Relay  (unary)            with GRPC_RELAY_PORT set: waits 0-4 ms (work before the call,
#                             so that concurrent handlers call downstream in any order),
#                             calls GRPC_RELAY_METHOD (Say or Relay) of the server on
#                             127.0.0.1:GRPC_RELAY_PORT with the same request and
#                             x-request-id over one channel (one HTTP/2 connection), and
#                             answers its answer (or its status).
import os
import random
import time
from concurrent import futures

import grpc

BIG = 300000


def say(request, context):
    return b"hello " + request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def slow(request, context):
    until = time.monotonic() + 2.0
    while time.monotonic() < until and context.is_active():
        time.sleep(0.05)
    return b"slow " + request


def count(request, context):
    for i in range(1, int(request.split()[-1]) + 1):
        yield b"n=%d" % i


def big(request, context):
    return (b"big " + request + b" ").ljust(BIG, b"x")[:BIG]


def echo(request, context):
    return b"%d" % len(context.invocation_metadata())


RELAY_PORT = os.environ.get("GRPC_RELAY_PORT")
downstream = None
if RELAY_PORT:
    downstream = grpc.insecure_channel(
        "127.0.0.1:" + RELAY_PORT, options=[("grpc.enable_http_proxy", 0)]
    ).unary_unary("/demo.Greeter/" + os.environ.get("GRPC_RELAY_METHOD", "Say"))


def relay(request, context):
    if downstream is None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GRPC_RELAY_PORT is not set")
    ids = [kv for kv in context.invocation_metadata() if kv[0] == "x-request-id"]
    time.sleep(random.random() * 0.004)
    try:
        return downstream(request, timeout=20.0, metadata=ids)
    except grpc.RpcError as e:
        context.abort(e.code(), e.details())


# No (de)serializers: the handlers get and return bytes.
unary = grpc.unary_unary_rpc_method_handler
handlers = {
    "Say": unary(say),
    "Fail": unary(fail),
    "Slow": unary(slow),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Big": unary(big),
    "Echo": unary(echo),
    "Relay": unary(relay),
}
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=16),
    handlers=[grpc.method_handlers_generic_handler("demo.Greeter", handlers)],
    options=[("grpc.so_reuseport", 0)],
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
