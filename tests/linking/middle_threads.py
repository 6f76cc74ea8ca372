# The thread-per-request middle service of the linking suite: `http.server`'s
# ThreadingHTTPServer (one thread per connection, so one request at a time per thread) and
# one shared `requests.Session` (a keep-alive pool). `python3 -c SRC DOWNSTREAM_PORT`,
# prints its port, then answers `GET /work?id=N` after a jitter of (N*7919)%9 ms and one
# call `GET /down?id=N` made by the thread serving the request.
import http.server
import sys
import time
import urllib.parse

import requests
from requests.adapters import HTTPAdapter

DOWN = "http://127.0.0.1:%s/down" % sys.argv[1]
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=16))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = int(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["id"][0])
        time.sleep(((n * 7919) % 9) / 1000)
        r = session.get("%s?id=%d" % (DOWN, n), timeout=10)
        status, text = (200, "ok %d\n" % n) if r.status_code == 200 else (502, "downstream\n")
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
