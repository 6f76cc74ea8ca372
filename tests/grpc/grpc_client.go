// The HTTP/2 suite's Go gRPC client (grpc-go from Debian's golang-google-grpc-dev, GOPATH
// mode, raw bytes): `grpc_client PORT MODE CALLS CONCURRENCY` calls `demo.Greeter` on ONE
// client connection (one HTTP/2 connection), CONCURRENCY calls in flight; call n (1..CALLS)
// sends b"id=<n>" with metadata x-request-id=<n>. MODE: `say` (Say) or `relay` (Relay, the
// first server of a chain); both expect OK and "hello id=<n>". Prints one line as the
// other gRPC clients do, `calls=N ok=K codes=OK:K,NOT_FOUND:0,DEADLINE_EXCEEDED:0,...
// messages=M conns=C` (C: TCP connections dialed), then exits 0 when every call answered
// as expected, else prints the first unexpected outcomes and exits 1.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

func main() {
	if len(os.Args) != 5 || (os.Args[2] != "say" && os.Args[2] != "relay") {
		fmt.Fprintln(os.Stderr, "usage: grpc_client PORT say|relay CALLS CONCURRENCY")
		os.Exit(2)
	}
	port, mode := os.Args[1], os.Args[2]
	calls, _ := strconv.Atoi(os.Args[3])
	concurrency, _ := strconv.Atoi(os.Args[4])
	method := "/demo.Greeter/Say"
	if mode == "relay" {
		method = "/demo.Greeter/Relay"
	}
	var conns int64
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := grpc.Dial("127.0.0.1:"+port, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			atomic.AddInt64(&conns, 1)
			return dialer.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	codes := map[string]int{"OK": 0, "NOT_FOUND": 0, "DEADLINE_EXCEEDED": 0}
	order := []string{"OK", "NOT_FOUND", "DEADLINE_EXCEEDED"}
	var problems []string
	var next, messages int64
	one := func(n int64) {
		req := []byte(fmt.Sprintf("id=%d", n))
		ctx, cancel := context.WithTimeout(
			metadata.AppendToOutgoingContext(context.Background(), "x-request-id", strconv.FormatInt(n, 10)),
			20*time.Second)
		defer cancel()
		var answer []byte
		err := conn.Invoke(ctx, method, &req, &answer, grpc.ForceCodec(rawCodec{}))
		code := status.Code(err).String()
		mu.Lock()
		defer mu.Unlock()
		name := map[string]string{"OK": "OK", "NotFound": "NOT_FOUND", "DeadlineExceeded": "DEADLINE_EXCEEDED"}[code]
		if name == "" {
			name = code
		}
		if _, seen := codes[name]; !seen {
			order = append(order, name)
		}
		codes[name]++
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("id=%d %s: %v", n, mode, err))
		case string(answer) != "hello "+string(req):
			messages++
			problems = append(problems, fmt.Sprintf("id=%d %s: answer %q", n, mode, answer))
		default:
			messages++
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < concurrency && w < calls; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := atomic.AddInt64(&next, 1)
				if n > int64(calls) {
					return
				}
				one(n)
			}
		}()
	}
	wg.Wait()
	conn.Close()
	list := ""
	for i, c := range order {
		if i > 0 {
			list += ","
		}
		list += fmt.Sprintf("%s:%d", c, codes[c])
	}
	fmt.Printf("calls=%d ok=%d codes=%s messages=%d conns=%d\n", calls, codes["OK"], list, messages, conns)
	for i, p := range problems {
		if i == 20 {
			break
		}
		fmt.Println("unexpected:", p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
