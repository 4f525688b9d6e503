//! Backends for the tests: the built-in echo backend, and raw HTTP/1.1 backends written by
//! hand on `std::net` threads, to send exactly the framing (or misbehaviour) a test needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use portcullis_runtime::echo;

use super::find;

/// The httpbin-like echo backend: `/get` answers JSON with the request's headers and
/// `body_bytes`, `/status/N` answers status N.
pub fn echo() -> SocketAddr {
    echo::spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A request as a raw backend received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head, up to and including the empty line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line's target.
    pub fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }
}

/// What a raw backend does after answering a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request on the connection.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// Spawns a backend that reads each request (head, and a `Content-Length` body) and lets
/// `answer` write whatever it likes on the connection.
pub fn raw_backend(
    answer: impl Fn(&RawRequest, &mut TcpStream) -> After + Send + Sync + 'static,
) -> SocketAddr {
    raw_backend_on(SocketAddr::from(([127, 0, 0, 1], 0)), answer)
}

/// [`raw_backend`] listening on `addr`.
pub fn raw_backend_on(
    addr: SocketAddr,
    answer: impl Fn(&RawRequest, &mut TcpStream) -> After + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let answer = Arc::clone(&answer);
            thread::spawn(move || serve_raw(tcp, answer.as_ref()));
        }
    });
    addr
}

fn serve_raw(mut tcp: TcpStream, answer: &dyn Fn(&RawRequest, &mut TcpStream) -> After) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < length {
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf.drain(..length).collect();
        let request = RawRequest { head, body };
        if answer(&request, &mut tcp) == After::Close {
            return;
        }
    }
}

/// A keep-alive backend answering every request `200` with `body`.
pub fn named_backend(body: &'static str) -> SocketAddr {
    named_backend_on(SocketAddr::from(([127, 0, 0, 1], 0)), body)
}

/// [`named_backend`] listening on `addr`.
pub fn named_backend_on(addr: SocketAddr, body: &'static str) -> SocketAddr {
    raw_backend_on(addr, move |_, tcp| {
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        match tcp.write_all(response.as_bytes()) {
            Ok(()) => After::KeepAlive,
            Err(_) => After::Close,
        }
    })
}

/// A backend that writes `response` (raw bytes) for every request, then keeps the connection
/// or closes it.
pub fn canned_backend(response: &'static [u8], after: After) -> SocketAddr {
    raw_backend(move |_, tcp| match tcp.write_all(response) {
        Ok(()) => after,
        Err(_) => After::Close,
    })
}

/// A backend that accepts and reads the request, then never answers (it holds the connection
/// until the gateway gives up and closes it).
pub fn silent_backend() -> SocketAddr {
    raw_backend(|_, tcp| {
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink);
        After::Close
    })
}

/// An address where nothing listens (bound, then released).
pub fn dead_endpoint() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

/// How long a probe connect waits before [`black_hole_on`] takes its accept queue for full. A
/// connect on loopback completes within the `connect` call itself, so any wait means a
/// dropped SYN.
const BLACK_HOLE_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// An endpoint where connecting times out: a listener that never accepts, its accept queue
/// filled, so the kernel drops every further SYN and the connecting side waits until it gives
/// up. Lives as long as this value.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<TcpStream>,
}

/// A [`BlackHole`] on `addr`.
pub fn black_hole_on(addr: SocketAddr) -> BlackHole {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    listener.bind(&addr.into()).unwrap();
    // Backlog 0: the kernel queues one connection, then drops SYNs.
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    // Full once two probes in a row time out (one could be a busy machine's hiccup).
    let mut timeouts_in_a_row = 0;
    while timeouts_in_a_row < 2 {
        match TcpStream::connect_timeout(&addr, BLACK_HOLE_PROBE_TIMEOUT) {
            Ok(tcp) => {
                queued.push(tcp);
                timeouts_in_a_row = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => timeouts_in_a_row += 1,
            Err(e) => panic!("probing the black hole at {addr}: {e}"),
        }
        assert!(
            queued.len() < 16,
            "the accept queue of {addr} does not fill"
        );
    }
    BlackHole {
        addr,
        _listener: listener,
        _queued: queued,
    }
}
