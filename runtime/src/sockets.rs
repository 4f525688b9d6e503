//! Socket setup and the few socket calls monoio does not offer: listening sockets with the
//! data plane's options, taking the connections already waiting in a listener's queue, and
//! a `recv` peek. The one `unsafe` here borrows a descriptor monoio owns.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

use monoio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Pending connections the kernel queues per listener before refusing. Handshake storms
/// arrive in bursts, and a gateway opens hundreds of backend connections at once for a burst
/// of concurrent requests (the echo backend listens with this too: std's 128 overflowed, and
/// each refused SYN waited a second to be sent again); 4096 rides them out (the kernel caps it
/// at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listening socket with [`LISTEN_BACKLOG`] and `TCP_NODELAY`; `reuse_port`
/// for the shards' listeners, not for a single-process server such as the echo backend
/// (where it would let a stale copy share the port unnoticed).
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    // Responses leave as soon as they are written. Linux copies TCP_NODELAY to every accepted
    // socket, so setting it here once saves a setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Why a shard could not listen on a port.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another socket (another process, or another Portcullis) listens on the port. Shards bind
    /// with `SO_REUSEPORT`, which would let a second process of the same user share the port
    /// and silently take part of its connections, so this is checked before the first bind.
    #[error("port {port} is already in use by another process")]
    InUse { port: u16 },
    /// The bind itself failed (a port below 1024 without `CAP_NET_BIND_SERVICE`, an address
    /// this host does not have, ...).
    #[error("cannot listen on port {port}: {source}")]
    Bind { port: u16, source: io::Error },
}

/// The ports this process's shards listen on, shared by the shards only when they open or
/// close a port (never per connection). The first shard to open a port checks that no other
/// socket holds it; the others then join its `SO_REUSEPORT` group.
#[derive(Debug, Default)]
pub struct PortClaims {
    /// Port -> how many of our shards hold a listener on it.
    holders: Mutex<HashMap<u16, usize>>,
}

impl PortClaims {
    /// A shard's listener on `port` (all addresses for `None`). Fails with
    /// [`ListenError::InUse`] when no shard of ours holds the port yet and another socket
    /// listens on it.
    pub fn listen(
        &self,
        port: u16,
        address: Option<IpAddr>,
    ) -> Result<std::net::TcpListener, ListenError> {
        let mut holders = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bind = |reuse_port| {
            bind_on(port, address, reuse_port).map_err(|source| ListenError::Bind { port, source })
        };
        if !holders.contains_key(&port) {
            // A bind without SO_REUSEPORT fails while any socket listens on the port. It does
            // not listen itself and is closed at once; the lock keeps our other shards from
            // racing it.
            match bind(false) {
                Ok(probe) => drop(probe),
                Err(ListenError::Bind { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse =>
                {
                    return Err(ListenError::InUse { port });
                }
                Err(e) => return Err(e),
            }
        }
        let listener = bind(true)?;
        *holders.entry(port).or_default() += 1;
        Ok(listener)
    }

    /// A shard closed its listener on `port`.
    pub fn release(&self, port: u16) {
        let mut holders = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = holders.get_mut(&port) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&port);
            }
        }
    }
}

/// A listener on `port` of `address`, or of all addresses: dual-stack `[::]` (which also takes
/// IPv4; curl tries `localhost` as ::1 first), or `0.0.0.0` on a host without IPv6.
fn bind_on(
    port: u16,
    address: Option<IpAddr>,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    match address {
        Some(ip) => bind_listener(SocketAddr::new(ip, port), reuse_port),
        None => bind_listener(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            reuse_port,
        )
        .or_else(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                return Err(e);
            }
            bind_listener(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                reuse_port,
            )
        }),
    }
}

/// Runs `f` on a socket2 view of a socket monoio owns (monoio's types offer only `AsRawFd`,
/// not `AsFd`).
fn with_socket<T>(socket: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: `socket` owns this open descriptor for the whole call, and the borrow ends with
    // it.
    #[allow(unsafe_code)]
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    f(SockRef::from(&fd))
}

/// A connection already waiting in the (non-blocking) listener's queue, taken without
/// waiting; `None` when the queue is empty.
pub fn accept_waiting(listener: &impl AsRawFd) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    let accepted = with_socket(listener, |s| {
        s.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    });
    match accepted {
        Ok((socket, addr)) => {
            let peer = addr.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP connection")
            })?;
            let tcp = TcpStream::from_std(std::net::TcpStream::from(socket))?;
            Ok(Some((tcp, peer)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `socket` has neither been closed by its peer (a read would return EOF) nor been
/// sent anything unasked (a read would return data): one non-blocking `recv` peek.
pub fn quiet_and_open(socket: &impl AsRawFd) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match with_socket(socket, |s| {
        s.recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    }) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_listener() -> std::net::TcpListener {
        bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)), true).unwrap()
    }

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = local_listener();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn waiting_connections_are_taken_one_by_one_until_the_queue_is_empty() {
        let listener = local_listener();
        // The kernel completes a loopback connect before `connect` returns, so both are
        // queued by now.
        let clients: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut peers = Vec::new();
            while let Some((tcp, peer)) = accept_waiting(&listener).unwrap() {
                assert!(tcp.nodelay().unwrap());
                peers.push(peer);
            }
            let mut expected: Vec<SocketAddr> =
                clients.iter().map(|c| c.local_addr().unwrap()).collect();
            peers.sort();
            expected.sort();
            assert_eq!(peers, expected);
        });
    }
}
