//! The nginx configuration the suites and the benchmark run: one server in its own
//! prefix (every temporary path under it, so nginx never touches the system's), as root.

use std::path::Path;

/// What differs between the suites' nginx and the benchmark's.
#[derive(Debug, Clone)]
pub struct NginxConf<'a> {
    pub prefix: &'a Path,
    /// `host:port` to listen on.
    pub listen: String,
    pub workers: u32,
    pub worker_connections: u32,
    /// Log every request to `<prefix>/access.log` (the suites' independent count).
    pub access_log: bool,
    pub keepalive_requests: u64,
    /// Directives at `http` level before the server (an `upstream` block).
    pub http_extra: String,
    /// The `location` blocks of the one server.
    pub locations: String,
}

impl NginxConf<'_> {
    pub fn render(&self) -> String {
        let p = self.prefix.display();
        let access_log = if self.access_log {
            format!("{p}/access.log")
        } else {
            "off".to_owned()
        };
        let NginxConf {
            listen,
            workers,
            worker_connections,
            keepalive_requests,
            http_extra,
            locations,
            ..
        } = self;
        format!(
            r#"daemon off;
master_process on;
worker_processes {workers};
user root;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log {access_log};
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    sendfile on;
    keepalive_requests {keepalive_requests};
    default_type application/octet-stream;
    {http_extra}
    server {{
        listen {listen};
        root {p}/html;
        {locations}
    }}
}}
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_prefix() {
        let conf = NginxConf {
            prefix: Path::new("/tmp/n"),
            listen: "127.0.0.1:8080".into(),
            workers: 2,
            worker_connections: 1024,
            access_log: true,
            keepalive_requests: 100,
            http_extra: String::new(),
            locations: "location / { }".into(),
        }
        .render();
        let paths: Vec<&str> = conf
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| w.starts_with('/'))
            .collect();
        // pid, error_log, access_log, five temp paths, root; `location /` is a URI.
        assert_eq!(paths.len(), 10, "{paths:?}");
        for path in paths.iter().filter(|p| **p != "/") {
            assert!(path.starts_with("/tmp/n/"), "{path}");
        }
        assert!(conf.contains("worker_processes 2;"));
        assert!(conf.contains("access_log /tmp/n/access.log;"));
        assert!(conf.contains("listen 127.0.0.1:8080;"));
    }
}
