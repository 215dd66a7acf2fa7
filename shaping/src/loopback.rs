//! Congestion control for the sockets the actuators open on loopback.
//!
//! Reads nothing; sets `TCP_CONGESTION` on sockets it is given, before they
//! connect. Needs no privilege where cubic is built into the kernel
//! (Debian's: it is then open to every process).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::TcpSocket;
use tracing::debug;

/// Linux's default congestion control (cubic) for a socket on loopback
/// (`addr`: where it listens or what it connects to): the proxy's listener,
/// whose clients are on this host, an upstream there (a local S3 endpoint), a
/// tunnel's local side. A loopback connection has no path to probe and no
/// queue to pace for; a pacing algorithm, BBR where it is the host's
/// default, still paces every burst on a timer, and the timer sends from
/// another CPU than the relay's writes, so packets reorder and are sent
/// again (`bench/RESULTS.md`, S3 pacing: the proxy's congestion control).
/// Set before the connection exists: BBR turns the kernel's pacing on for
/// the socket when it starts, and a later switch of algorithm leaves it on.
/// Best effort: where cubic is refused the host's choice stays.
pub(crate) fn local_congestion(socket: &impl AsFd, addr: SocketAddr) {
    if !is_local(addr) {
        return;
    }
    let cubic = std::ffi::OsString::from("cubic");
    if let Err(error) = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::TcpCongestion, &cubic) {
        debug!(%addr, %error, "cubic refused on a loopback socket");
    }
}

/// A TCP socket of `addr`'s family, to connect to it, with
/// [`local_congestion`] set.
pub(crate) fn socket_to(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    local_congestion(&socket, addr);
    Ok(socket)
}

/// Whether `peer` is this host's loopback (IPv4-mapped addresses included).
fn is_local(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use nix::sys::socket::{getsockopt, setsockopt, sockopt::TcpCongestion};
    use tokio::net::{TcpListener, TcpSocket};

    use super::{is_local, local_congestion, socket_to};

    #[tokio::test]
    async fn loopback_sockets_are_switched_to_cubic_before_they_connect() {
        // The listener starts as reno (built into every kernel), so the
        // accepted socket's check holds whatever the host's default; the
        // connecting socket's starts as the default (bbr on the VM where this
        // was written, where a socket_to that set nothing fails it).
        let reno = OsString::from("reno");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        setsockopt(&listener, TcpCongestion, &reno).unwrap();
        local_congestion(&listener, addr);
        let client = socket_to(addr).unwrap().connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(getsockopt(&accepted, TcpCongestion).unwrap(), "cubic");
        assert_eq!(getsockopt(&client, TcpCongestion).unwrap(), "cubic");

        // Not on loopback: the host's choice (here the socket's) stays.
        let remote = TcpSocket::new_v4().unwrap();
        setsockopt(&remote, TcpCongestion, &reno).unwrap();
        local_congestion(&remote, "10.253.0.2:443".parse().unwrap());
        assert_eq!(getsockopt(&remote, TcpCongestion).unwrap(), "reno");
    }

    #[test]
    fn only_peers_on_loopback_are_local() {
        for local in ["127.0.0.1:9000", "127.1.2.3:80", "[::1]:443", "[::ffff:127.0.0.1]:443"] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.253.0.2:9000",
            "52.216.0.1:443",
            "[2600:1f18::1]:443",
            "[::ffff:10.0.0.1]:80",
        ] {
            assert!(!is_local(remote.parse().unwrap()), "{remote}");
        }
    }
}
