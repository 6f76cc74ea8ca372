// The Go middle service of the linking suite (stdlib only): `middle MODE DOWNSTREAM_PORT`,
// prints its port, then answers `GET /work?id=N` (and `/down?id=N`) after a jitter of (N*7919)%9 ms and
// downstream calls through one keep-alive pooled http.Client:
//
//	plain:  one call `/down?id=N` from the handler's goroutine;
//	fanout: two goroutines call `/down?id=N&part=a` and `…&part=b` in parallel;
//	pool:   one of 4 worker goroutines started at boot makes the call; the handler waits.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

var client = &http.Client{
	Timeout: 10 * time.Second,
	// The default keeps 2 idle connections per host: 16 concurrent handlers would dial
	// and close connections instead of reusing them.
	Transport: &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64},
}

var downstream string

func call(id, part string) error {
	url := downstream + "/down?id=" + id
	if part != "" {
		url += "&part=" + part
	}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read to the end so the connection goes back to the pool.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("downstream answered %d", resp.StatusCode)
	}
	return nil
}

type job struct {
	id   string
	done chan error
}

func main() {
	mode := os.Args[1]
	downstream = "http://127.0.0.1:" + os.Args[2]
	jobs := make(chan job)
	for i := 0; mode == "pool" && i < 4; i++ {
		go func() {
			for j := range jobs {
				j.done <- call(j.id, "")
			}
		}()
	}
	work := func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		n, err := strconv.Atoi(id)
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		time.Sleep(time.Duration(n*7919%9) * time.Millisecond)
		switch mode {
		case "plain":
			err = call(id, "")
		case "fanout":
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i, part := range []string{"a", "b"} {
				wg.Add(1)
				go func(i int, part string) {
					defer wg.Done()
					errs[i] = call(id, part)
				}(i, part)
			}
			wg.Wait()
			for _, e := range errs {
				if e != nil {
					err = e
				}
			}
		case "pool":
			done := make(chan error, 1)
			jobs <- job{id, done}
			err = <-done
		default:
			err = fmt.Errorf("unknown mode %q", mode)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "ok %s\n", id)
	}
	// `/down` too, so that one middle can call another: Go → Go → Python.
	http.HandleFunc("/work", work)
	http.HandleFunc("/down", work)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic(http.Serve(ln, nil))
}
