// The HTTP/2 suite's Go h2c server (stdlib only, Go ≥ 1.24): `h2c_server`, net/http serving
// unencrypted HTTP/2 with prior knowledge only (http.Server.Protocols: no HTTP/1, no TLS),
// on 127.0.0.1 (an ephemeral port, printed as the first line):
//
//	GET /hello?id=N   200 `hello N`
//	GET /status/503   503 `unavailable`
//
// another method 405, another path net/http's 404. (Plain patterns: built in GOPATH mode,
// as the suites build, Go applies Go 1.20's GODEBUG defaults, without method patterns.)
package main

import (
	"fmt"
	"net"
	"net/http"
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
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello %s", r.URL.Query().Get("id"))
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
