//! Node.js: an `http` server and a keep-alive client.

use std::process::Command;

use anyhow::Result;

use super::spawn_printing_port;
use crate::workloads::Server;

pub const NODE_SERVER: &str = r#"
const http = require("http");
const server = http.createServer((req, res) => {
  let n = 0;
  req.on("data", (c) => (n += c.length));
  req.on("end", () => {
    const body = req.method === "GET" ? `node ${req.url}\n` : `received ${n}\n`;
    res.writeHead(req.method === "GET" ? 200 : 201, { "Content-Type": "text/plain" });
    res.end(body);
  });
});
server.keepAliveTimeout = 30000;
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
"#;

/// `node -e NODE_CLIENT port total concurrency post_bytes`: a keep-alive agent with at
/// most `concurrency` sockets; every fourth request is a POST. Prints `requests=N`.
pub const NODE_CLIENT: &str = r#"
const http = require("http");
const [port, total, concurrency, postBytes] = process.argv.slice(1).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const body = Buffer.alloc(postBytes, 120);
function one(i) {
  return new Promise((resolve, reject) => {
    const post = i % 4 === 3;
    const req = http.request(
      { host: "127.0.0.1", port, agent, path: `/node/${i}`, method: post ? "POST" : "GET",
        headers: post ? { "Content-Length": body.length } : {} },
      (res) => {
        let n = 0;
        res.on("data", (c) => (n += c.length));
        res.on("end", () => (res.statusCode === (post ? 201 : 200) ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      });
    req.on("error", reject);
    if (post) req.write(body);
    req.end();
  });
}
(async () => {
  let next = 0, done = 0;
  async function worker() {
    while (next < total) { const i = next++; await one(i); done++; }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  console.log(`requests=${done}`);
  agent.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

pub fn node_server() -> Result<Server> {
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_SERVER);
    spawn_printing_port(cmd, "node server")
}

pub fn node_client(port: u16, total: usize, concurrency: usize, post_bytes: usize) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_CLIENT).args([
        port.to_string(),
        total.to_string(),
        concurrency.to_string(),
        post_bytes.to_string(),
    ]);
    cmd
}
