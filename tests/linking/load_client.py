# The load client of the linking suite: `python3 -c SRC PORT FIRST_ID COUNT WORKERS`.
# WORKERS threads, each with one keep-alive `http.client` connection, take ids from a
# shared queue and send `GET /work?id=N` (never retried: one request per id). Prints the
# ids sent, how many answered 200, and the first errors.
import http.client
import queue
import sys
import threading

port, first, count, workers = map(int, sys.argv[1:5])
ids = queue.Queue()
for n in range(first, first + count):
    ids.put(n)
lock = threading.Lock()
sent, errors = [], []
ok = 0


def worker():
    global ok
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    while True:
        try:
            n = ids.get_nowait()
        except queue.Empty:
            break
        with lock:
            sent.append(n)
        try:
            conn.request("GET", "/work?id=%d" % n)
            r = conn.getresponse()
            r.read()
            with lock:
                if r.status == 200:
                    ok += 1
                else:
                    errors.append("id=%d status=%d" % (n, r.status))
        except Exception as e:
            with lock:
                errors.append("id=%d %r" % (n, e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.close()


threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("sent=%s" % ",".join(map(str, sorted(sent))))
print("ok=%d errors=%d" % (ok, len(errors)), flush=True)
for e in errors[:20]:
    print("error: %s" % e, flush=True)
