//! Listening sockets and accepting connections from them.
//!
//! With `--defer-accept` the kernel holds a new connection until its first bytes come
//! (`TCP_DEFER_ACCEPT`), so that the first read made as it is accepted (`fast/first.rs`)
//! finds its request there: under `wrk -H 'Connection: close'` about half of the connections
//! were otherwise accepted before their request, and each of those cost a task, two
//! `epoll_ctl` calls, a second read and a wake-up (docs/performance.md). A connection that sends
//! nothing is accepted when the kernel's wait ends (one SYN-ACK retransmission, about 1 s),
//! and then waits for its first request under `--idle-timeout` as any other.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::unix::AsyncFd;

/// Pending connections the kernel queues per listener; sized for load tests that open
/// thousands of connections at once.
const LISTEN_BACKLOG: i32 = 4096;

/// Opens a non-blocking listening socket with `SO_REUSEPORT` and `TCP_NODELAY` (inherited by
/// accepted sockets on Linux), and with `defer_accept`, `TCP_DEFER_ACCEPT`.
pub(super) fn listen(addr: SocketAddr, defer_accept: bool) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(false)
            .or_else(|_| socket.set_only_v6(true))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    if defer_accept {
        set_defer_accept(&socket)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How long, in seconds, the kernel holds a silent connection with `--defer-accept`: it is
/// rounded up to SYN-ACK retransmissions, the first of which goes after 1 s.
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// Sets `TCP_DEFER_ACCEPT` on a listening socket (socket2 has no setter for it).
#[allow(unsafe_code)]
fn set_defer_accept(socket: &Socket) -> io::Result<()> {
    let value: libc::c_int = DEFER_ACCEPT_SECONDS;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for the whole call (`socket` is borrowed), and the kernel
    // reads `len` bytes from `value`, an initialised `c_int` that outlives the call.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            len,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts a connection from `listener` as a non-blocking socket not yet registered with the
/// runtime (as `accept4` with `SOCK_NONBLOCK` gives it), so that one answered by its first
/// read never is.
pub(super) async fn accept(listener: &AsyncFd<StdListener>) -> io::Result<(StdStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|listener| {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            SockRef::from(listener.get_ref()).accept4(flags)
        });
        if let Ok(accepted) = accepted {
            let (socket, peer) = accepted?;
            let peer = peer.as_socket().ok_or(io::ErrorKind::InvalidData)?;
            return Ok((socket.into(), peer));
        }
    }
}

/// Accept errors that concern one connection only: retry at once.
pub(super) fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
