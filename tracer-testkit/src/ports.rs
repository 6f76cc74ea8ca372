//! Free local ports for the processes a test starts.

use std::net::SocketAddr;

/// A 127.0.0.1 address with nothing listening (bound, then released): for a process that
/// will bind it, or a dead collector. Another process could take the port in between; on a
/// test machine that is unlikely.
pub fn unused_local_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The port of [`unused_local_addr`].
pub fn free_port() -> std::io::Result<u16> {
    Ok(unused_local_addr()?.port())
}
