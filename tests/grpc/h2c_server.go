// The HTTP/2 suite's Go h2c server (stdlib only, Go ≥ 1.24): `h2c_server`, net/http serving
// unencrypted HTTP/2 with prior knowledge only (http.Server.Protocols: no HTTP/1, no TLS),
// on 127.0.0.1 (an ephemeral port, printed as the first line):
//
//	GET /hello?id=N   200 `hello N`; with H2C_RELAY_PORT set, first waits 0-4 ms (work
//	                  before the call, so concurrent handlers call in any order) and
//	                  calls GET /down?id=N on 127.0.0.1:H2C_RELAY_PORT (HTTP/1.1, pooled
//	                  keep-alive connections): 502 unless it answers 200
//	GET /status/503   503 `unavailable`
//
// another method 405, another path net/http's 404. (Plain patterns: built in GOPATH mode,
// as the suites build, Go applies Go 1.20's GODEBUG defaults, without method patterns.)
package main

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"time"
)

func get(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return false
	}
	return true
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		if !get(w, r) {
			return
		}
		id := r.URL.Query().Get("id")
		if relay := os.Getenv("H2C_RELAY_PORT"); relay != "" {
			time.Sleep(time.Duration(rand.Int63n(int64(4 * time.Millisecond))))
			resp, err := http.Get("http://127.0.0.1:" + relay + "/down?id=" + id)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				http.Error(w, resp.Status, http.StatusBadGateway)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello %s", id)
	})
	mux.HandleFunc("/status/503", func(w http.ResponseWriter, r *http.Request) {
		if !get(w, r) {
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, "unavailable")
	})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protocols}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic(srv.Serve(ln))
}
