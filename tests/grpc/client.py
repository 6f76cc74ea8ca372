# The HTTP/2 suite's Python gRPC client (grpcio, raw bytes, no generated code):
# `python3 -c SRC PORT MODE CALLS CONCURRENCY` against `demo.Greeter` of server.py.
# Every call of a run goes over ONE channel, so all of them are streams of one HTTP/2
# connection; CONCURRENCY threads make the calls, the first wave starting together (a
# barrier), so up to CONCURRENCY streams are open at once. Call n (1..CALLS) carries its id
# in the request, b"id=<n>". MODE:
#   say       Say, expects OK and b"hello id=<n>";
#   fail      Fail, expects NOT_FOUND with details "no such greeting";
#   deadline  Slow with a 0.3 s timeout, expects DEADLINE_EXCEEDED;
#   stream    Count with b"id=<n> 5", expects OK and the 5 messages b"n=1" ... b"n=5";
#   big       Big, expects OK and one 300000-byte message;
#   metadata  Echo with 40 distinct metadata keys `x-meta-<n>-<k>` (values distinct too,
#             about 90 bytes: 40 entries exceed HPACK's default 4 KiB dynamic table), expects
#             OK and a count of at least 40 (the server also sees user-agent: 41). NB
#             grpcio's C core encodes custom metadata as literals without indexing, so these
#             never enter the dynamic table; the Node.js client's metadata mode does evict;
#   mixed     call n is the mode (n-1) % 6 of the six above, in that order;
#   relay     Relay (the first server of a chain: it calls the next), expects OK and
#             b"hello id=<n>" from the chain's last server.
# Prints one line, `calls=N ok=K codes=OK:K,NOT_FOUND:F,DEADLINE_EXCEEDED:D messages=M
# conns=C` (ok: calls that ended OK; any other status code is appended to codes; M: response
# messages received; C: TCP connections to PORT this process had open, sampled every 10 ms
# from /proc), then exits 0 when every call ended as its mode expects, else prints the
# first unexpected outcomes and exits 1.
import collections
import os
import sys
import threading
import time

import grpc

port, mode = int(sys.argv[1]), sys.argv[2]
calls, concurrency = int(sys.argv[3]), int(sys.argv[4])
MODES = ["say", "fail", "deadline", "stream", "big", "metadata"]
if mode not in MODES + ["mixed", "relay"]:
    sys.exit("unknown mode %r: one of %s, mixed or relay" % (mode, ", ".join(MODES)))
TIMEOUT = 20.0
BIG = 300000

channel = grpc.insecure_channel(
    "127.0.0.1:%d" % port, options=[("grpc.enable_http_proxy", 0)]
)
grpc.channel_ready_future(channel).result(timeout=10)
unary = {
    name: channel.unary_unary("/demo.Greeter/" + name)
    for name in ["Say", "Fail", "Slow", "Big", "Echo", "Relay"]
}
count = channel.unary_stream("/demo.Greeter/Count")


def one(n, kind):
    """Makes call n; returns (status code name, messages received, problem or None)."""
    req = b"id=%d" % n
    # The id in metadata too: the tests match spans to calls by x-request-id.
    rid = [("x-request-id", str(n))]
    got = 0
    try:
        if kind in ("say", "relay"):
            r = unary[kind.title()](req, timeout=TIMEOUT, metadata=rid)
            got = 1
            return "OK", got, None if r == b"hello " + req else "answer %r" % r[:80]
        if kind == "fail":
            unary["Fail"](req, timeout=TIMEOUT, metadata=rid)
            return "OK", 1, "Fail answered OK"
        if kind == "deadline":
            unary["Slow"](req, timeout=0.3, metadata=rid)
            return "OK", 1, "Slow answered within 0.3 s"
        if kind == "stream":
            msgs = []
            for m in count(req + b" 5", timeout=TIMEOUT, metadata=rid):
                got += 1
                msgs.append(m)
            want = [b"n=%d" % i for i in range(1, 6)]
            return "OK", got, None if msgs == want else "messages %r" % msgs
        if kind == "big":
            r = unary["Big"](req, timeout=TIMEOUT, metadata=rid)
            got = 1
            ok = len(r) == BIG and r.startswith(b"big " + req + b" ")
            return "OK", got, None if ok else "answer of %d bytes %r" % (len(r), r[:40])
        if kind == "metadata":
            md = rid + [
                ("x-meta-%d-%d" % (n, k), "value-%d-%d-" % (n, k) + "m" * 80)
                for k in range(40)
            ]
            r = unary["Echo"](req, timeout=TIMEOUT, metadata=md)
            got = 1
            return "OK", got, None if int(r) >= 40 else "server saw %s entries" % r
    except grpc.RpcError as e:
        code = e.code().name
        want = {"fail": "NOT_FOUND", "deadline": "DEADLINE_EXCEEDED"}.get(kind)
        problem = None
        if code != want:
            problem = "%s %s" % (code, e.details())
        elif kind == "fail" and e.details() != "no such greeting":
            problem = "details %r" % e.details()
        return code, got, problem
    raise AssertionError(kind)


def connections():
    """Local addresses of this process's TCP sockets whose peer port is PORT."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == port:
                found.add(cols[1])
    return found


lock = threading.Lock()
codes = collections.Counter({"OK": 0, "NOT_FOUND": 0, "DEADLINE_EXCEEDED": 0})
messages = 0
problems = []
next_id = [1]
conns = connections()
done = threading.Event()


def sample():
    while not done.wait(0.01):
        found = connections()
        with lock:
            conns.update(found)


workers = max(1, min(concurrency, calls))
start = threading.Barrier(workers)


def worker():
    global messages
    start.wait()
    while True:
        with lock:
            n = next_id[0]
            if n > calls:
                return
            next_id[0] += 1
        kind = MODES[(n - 1) % len(MODES)] if mode == "mixed" else mode
        try:
            code, got, problem = one(n, kind)
        except Exception as e:  # noqa: BLE001 - any surprise is an unexpected outcome
            code, got, problem = "EXCEPTION", 0, repr(e)
        with lock:
            codes[code] += 1
            messages += got
            if problem:
                problems.append("id=%d %s: %s" % (n, kind, problem))


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done.set()
sampler.join()
conns.update(connections())
channel.close()

print(
    "calls=%d ok=%d codes=%s messages=%d conns=%d"
    % (
        calls,
        codes["OK"],
        ",".join("%s:%d" % kv for kv in codes.items()),
        messages,
        len(conns),
    ),
    flush=True,
)
for p in problems[:20]:
    print("unexpected: %s" % p, flush=True)
sys.exit(1 if problems else 0)
