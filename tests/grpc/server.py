# The HTTP/2 suite's Python gRPC server (grpcio, no generated code: raw bytes in and out).
# `python3 -c SRC`, listens on 127.0.0.1 (an ephemeral port, printed as the first line) and
# serves `demo.Greeter` from a pool of 16 threads:
#   Say    (unary)            answers b"hello " + request;
#   Fail   (unary)            aborts with NOT_FOUND, details "no such greeting";
#   Slow   (unary)            answers b"slow " + request after 2 s (for a client deadline;
#                             it stops waiting early once the client has cancelled);
#   Count  (server streaming) the request's last space-separated token is an ASCII integer
#                             N ("5", "id=3 5"): answers N messages b"n=1" ... b"n=N";
#   Big    (unary)            answers 40000 bytes (b"big " + request + b" " padded with
#                             b"x"): more than HTTP/2's default 16 KiB frame and 64 KiB
#                             window;
#   Echo   (unary)            answers the number of invocation metadata entries it got,
#                             in ASCII.
import time
from concurrent import futures

import grpc

BIG = 40000


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


# No (de)serializers: the handlers get and return bytes.
unary = grpc.unary_unary_rpc_method_handler
handlers = {
    "Say": unary(say),
    "Fail": unary(fail),
    "Slow": unary(slow),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Big": unary(big),
    "Echo": unary(echo),
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
