// The HTTP/2 suite's Go h2c client (stdlib only, Go ≥ 1.24): `h2c_client PORT REQUESTS
// CONCURRENCY`. An http.Transport speaking unencrypted HTTP/2 with prior knowledge only
// (Protocols), so every request is a stream of one connection: `GET /hello?id=N` for N =
// 1..REQUESTS, expecting 200, HTTP/2 and `hello N`; request 1 alone, then CONCURRENCY
// goroutines (one connection while CONCURRENCY is within the server's stream limit). Prints
// `requests=N ok=K conns=C` (K: requests answered as expected; C: TCP connections dialed,
// counted in the transport's DialContext) and exits 0 when K = N, else prints the first
// failures and exits 1.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: h2c_client PORT REQUESTS CONCURRENCY")
		os.Exit(2)
	}
	port := os.Args[1]
	requests, _ := strconv.Atoi(os.Args[2])
	concurrency, _ := strconv.Atoi(os.Args[3])
	var conns, next, ok int64
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			Protocols: &protocols,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				atomic.AddInt64(&conns, 1)
				return dialer.DialContext(ctx, network, addr)
			},
		},
	}
	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	get := func(id int64) {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%s/hello?id=%d", port, id))
		if err != nil {
			fail("id=%d: %v", id, err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("hello %d", id)
		switch {
		case err != nil:
			fail("id=%d: reading the body: %v", id, err)
		case resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || string(body) != want:
			fail("id=%d: %s %d %q", id, resp.Proto, resp.StatusCode, body)
		default:
			atomic.AddInt64(&ok, 1)
		}
	}
	// Request 1 alone: it opens the connection and, before its answer, brings the server's
	// SETTINGS. Until then the transport allows 100 streams on a connection and dials
	// another for the 101st; it never waits for a stream (net/http 1.24 does not expose
	// StrictMaxConcurrentStreams). After it, up to the server's limit (250 for Go's server)
	// share the one connection.
	if requests > 0 {
		get(atomic.AddInt64(&next, 1))
	}
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id := atomic.AddInt64(&next, 1)
				if id > int64(requests) {
					return
				}
				get(id)
			}
		}()
	}
	wg.Wait()
	client.CloseIdleConnections()
	fmt.Printf("requests=%d ok=%d conns=%d\n", requests, ok, conns)
	for i, f := range failures {
		if i == 20 {
			break
		}
		fmt.Println("unexpected:", f)
	}
	if len(failures) > 0 {
		os.Exit(1)
	}
}
