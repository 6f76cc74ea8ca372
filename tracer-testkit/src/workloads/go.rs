//! Go: a `net/http` server and client, and building Go programs offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;
use anyhow::{Context as _, Result, ensure};

pub const GO_SERVER: &str = r#"package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet {
			fmt.Fprintf(w, "go %s\n", r.URL.Path)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "received %d\n", n)
	})
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic(http.Serve(ln, nil))
}
"#;

/// `go-client URL TOTAL CONCURRENCY`: a keep-alive pool of at most CONCURRENCY
/// connections; every fifth request is a POST. Prints `requests=N conns=M` (M: connections
/// the pool opened, from httptrace).
pub const GO_CLIENT: &str = r#"package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

func main() {
	base := os.Args[1]
	total, _ := strconv.Atoi(os.Args[2])
	concurrency, _ := strconv.Atoi(os.Args[3])
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: concurrency,
		MaxConnsPerHost:     concurrency,
	}}
	var next, done, conns int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			atomic.AddInt64(&conns, 1)
		}
	}}
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1) - 1
				if i >= int64(total) {
					return
				}
				method, body, want := http.MethodGet, []byte(nil), http.StatusOK
				if i%5 == 4 {
					method, body, want = http.MethodPost, bytes.Repeat([]byte("g"), 1000), http.StatusCreated
				}
				req, _ := http.NewRequest(method, fmt.Sprintf("%s/go/%d", base, i), bytes.NewReader(body))
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
				resp, err := client.Do(req)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					fmt.Fprintln(os.Stderr, "status", resp.StatusCode)
					os.Exit(1)
				}
				atomic.AddInt64(&done, 1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("requests=%d conns=%d\n", done, conns)
}
"#;

/// Builds a single-file, stdlib-only Go program into `dir` (Go's build cache makes
/// rebuilds cheap).
pub fn go_build(dir: &TempDir, name: &str, source: &str) -> Result<PathBuf> {
    go_build_with(dir, name, source, &[])
}

/// [`go_build`] with extra `go build` flags (`-ldflags=-s -w` for a stripped binary).
pub fn go_build_with(dir: &TempDir, name: &str, source: &str, flags: &[&str]) -> Result<PathBuf> {
    go_build_by(Path::new("go"), dir, name, source, flags)
}

/// Where Debian's Go library packages (golang-*-dev) put their sources: the GOPATH of
/// every build here (GOPATH mode, offline), so a program may import them (grpc-go).
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// [`go_build_with`] by a given `go` command (another Go release).
pub fn go_build_by(
    go: &Path,
    dir: &TempDir,
    name: &str,
    source: &str,
    flags: &[&str],
) -> Result<PathBuf> {
    let src = dir.write(&format!("{name}.go"), source)?;
    let bin = dir.join(name);
    let out = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        // GOPATH mode, offline: library imports resolve only in Debian's Go packages.
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        // Never reach for another toolchain over the network.
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("cannot start go (install golang-go, or run `cargo xtask test` which does)")?;
    ensure!(
        out.status.success(),
        "go build {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}
