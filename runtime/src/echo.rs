//! A small httpbin-like HTTP/1.1 backend, for the demo and the benchmarks (`portcullis echo`).
//!
//! - `GET /get` (or `/headers`, `/anything...`): JSON with the request's method, URL, origin
//!   and headers, as httpbin answers, so the forwarded `X-Forwarded-*` and client-identity
//!   headers can be seen.
//! - `/status/NNN`: an empty response with that status.
//! - `/bytes/N`: N bytes (up to [`MAX_BYTES_RESPONSE`]), for response-size benchmarks.
//! - anything else: `200` with a short body.
//!
//! Request bodies are read (and counted in the JSON as `body_bytes`) with the same framing code
//! the gateway uses. Keep-alive, one request at a time per connection.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::thread;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use portcullis_core::http1::{
    ChunkedDecoder, ContentLengthBody, HeadLimits, RequestBody, RequestHead, parse_request_head,
};

use crate::bufpool;
use crate::sockets::bind_listener;
use crate::tls::read_append;

/// Largest `/bytes/N` response: enough for throughput tests, small enough to build in memory.
pub const MAX_BYTES_RESPONSE: usize = 16 * 1024 * 1024;

/// Starts the echo server on its own thread (epoll driver: it must run anywhere, tests
/// included) and returns the address it listens on.
pub fn spawn(listen: SocketAddr) -> io::Result<SocketAddr> {
    let std_listener = bind_listener(listen, false)?;
    let addr = std_listener.local_addr()?;
    thread::Builder::new()
        .name("echo".to_owned())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(async move {
                    if let Ok(listener) = TcpListener::from_std(std_listener) {
                        accept_loop(listener).await;
                    }
                }),
                Err(e) => tracing::error!(error = %e, "echo backend cannot start"),
            }
        })?;
    Ok(addr)
}

/// Runs the echo server on the current thread until the process ends.
pub fn run_blocking(listen: SocketAddr) -> io::Result<()> {
    let std_listener = bind_listener(listen, false)?;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(std_listener)?;
        accept_loop(listener).await;
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener) {
    loop {
        if let Ok((tcp, peer)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            monoio::spawn(serve(tcp, peer));
        }
    }
}

async fn serve(mut tcp: TcpStream, peer: SocketAddr) {
    let limits = HeadLimits::default();
    let mut buf = bufpool::take();
    loop {
        let head = loop {
            match parse_request_head(&buf, &limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(_) => {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec())
                        .await;
                    return;
                }
            }
            let (res, b) = read_append(&mut tcp, buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        };
        let body_bytes = match read_body(&mut tcp, &mut buf, &head).await {
            Some(n) => n,
            None => return,
        };
        let response = respond(&head, &buf, peer, body_bytes);
        buf.drain(..head.head_len.min(buf.len()));
        let (res, _) = tcp.write_all(response).await;
        if res.is_err() || !head.keep_alive {
            return;
        }
    }
}

/// Reads (and discards) the request body; leaves any pipelined bytes in `buf`.
async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, head: &RequestHead) -> Option<u64> {
    let mut rest: Vec<u8> = buf.get(head.head_len..).unwrap_or_default().to_vec();
    // `buf` keeps the head for building the response; the body is consumed from `rest`.
    buf.truncate(head.head_len);
    let mut total = 0u64;
    let mut length = match head.body {
        RequestBody::ContentLength(n) => Some(ContentLengthBody::new(n)),
        _ => None,
    };
    let mut chunked = (head.body == RequestBody::Chunked).then(ChunkedDecoder::new);
    let mut done = head.body == RequestBody::None;
    loop {
        if !done && !rest.is_empty() {
            let (consumed, finished) = if let Some(l) = &mut length {
                let p = l.advance(&rest);
                total += p.consumed as u64;
                (p.consumed, p.done)
            } else if let Some(c) = &mut chunked {
                // Count the chunk data only, not the chunk framing.
                let p = c
                    .advance_with(&rest, |data| total += data.len() as u64)
                    .ok()?;
                (p.consumed, p.done)
            } else {
                (0, true)
            };
            rest.drain(..consumed);
            done = finished;
        }
        if done {
            // Pipelined bytes after the body are kept after the head for the next round.
            buf.extend_from_slice(&rest);
            return Some(total);
        }
        let (res, b) = read_append(tcp, rest).await;
        rest = b;
        if !matches!(res, Ok(n) if n > 0) {
            return None;
        }
    }
}

fn respond(head: &RequestHead, buf: &[u8], peer: SocketAddr, body_bytes: u64) -> Vec<u8> {
    let path = head.path(buf);
    let connection = if head.keep_alive {
        ""
    } else {
        "connection: close\r\n"
    };
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        && (200..=599).contains(&code)
    {
        return format!("HTTP/1.1 {code} Echo\r\ncontent-length: 0\r\n{connection}\r\n")
            .into_bytes();
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let n = n.min(MAX_BYTES_RESPONSE);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n{connection}\r\n"
        )
        .into_bytes();
        out.resize(out.len() + n, b'x');
        return out;
    }
    let mut json = String::with_capacity(512);
    json.push_str("{\n  \"headers\": {");
    for (i, (name, value)) in head.headers(buf).iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            json,
            "{sep}\n    {}: {}",
            json_string(&String::from_utf8_lossy(name)),
            json_string(&String::from_utf8_lossy(value))
        );
    }
    let host = head.host().unwrap_or_default();
    let _ = write!(
        json,
        "\n  }},\n  \"method\": {},\n  \"origin\": {},\n  \"url\": {},\n  \"body_bytes\": {body_bytes}\n}}\n",
        json_string(head.method(buf)),
        json_string(&peer.ip().to_string()),
        json_string(&format!(
            "http://{host}{}",
            String::from_utf8_lossy(head.target(buf))
        )),
    );
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; encoding=utf-8\r\naccess-control-allow-origin: *\r\ncontent-length: {}\r\n{connection}\r\n",
        json.len()
    )
    .into_bytes();
    if !head.is_head() {
        out.extend_from_slice(json.as_bytes());
    }
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
