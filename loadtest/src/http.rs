//! HTTP/1.1 over a [`TlsClient`]: one request out, one response in, framed with the same
//! parser and body framing the gateway uses (`portcullis_core::http1`), so there is one way to
//! read an HTTP/1.1 message in this workspace.

use portcullis_core::http1::{
    ChunkProgress, ChunkedDecoder, ContentLengthBody, HeadLimits, ResponseBody, parse_response_head,
};

use crate::stats::Failure;
use crate::tls::TlsClient;

/// The request this client sends, encoded once.
pub fn request_bytes(path: &str, host: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portcullis-load\r\nAccept: */*\r\n{connection}\r\n"
    )
    .into_bytes()
}

/// A complete response.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    /// The connection can carry another request.
    pub reusable: bool,
}

enum Framing {
    None,
    Length(ContentLengthBody),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl Framing {
    fn advance(&mut self, input: &[u8]) -> Result<ChunkProgress, Failure> {
        match self {
            Framing::None => Ok(ChunkProgress {
                consumed: 0,
                done: true,
            }),
            Framing::Length(body) => Ok(body.advance(input)),
            Framing::Chunked(decoder) => decoder
                .advance(input)
                .map_err(|e| Failure::BadResponse(e.to_string())),
            Framing::UntilClose => Ok(ChunkProgress {
                consumed: input.len(),
                done: false,
            }),
        }
    }
}

/// Sends `request` and reads one final response (1xx are skipped). `buf` is the connection's
/// plaintext buffer: bytes of a response that arrive early stay in it.
pub async fn exchange(
    conn: &mut TlsClient,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Response, Failure> {
    conn.queue(request)?;
    conn.flush().await?;
    read_response(conn, buf).await
}

async fn read_response(conn: &mut TlsClient, buf: &mut Vec<u8>) -> Result<Response, Failure> {
    let limits = HeadLimits::default();
    let head = loop {
        match parse_response_head(buf, false, &limits) {
            Ok(Some(head)) if head.is_informational => {
                buf.drain(..head.head_len.min(buf.len()));
                continue;
            }
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(Failure::BadResponse(e.to_string())),
        }
        if conn.read_plain(buf).await? == 0 {
            return Err(Failure::Closed);
        }
    };
    let mut framing = match head.body {
        ResponseBody::None => Framing::None,
        ResponseBody::ContentLength(n) => Framing::Length(ContentLengthBody::new(n)),
        ResponseBody::Chunked => Framing::Chunked(ChunkedDecoder::new()),
        ResponseBody::CloseDelimited => Framing::UntilClose,
    };
    let mut pos = head.head_len;
    loop {
        let progress = framing.advance(buf.get(pos..).unwrap_or_default())?;
        pos += progress.consumed;
        if progress.done {
            break;
        }
        // Everything buffered was body: drop it so the buffer never grows with the body.
        buf.clear();
        pos = 0;
        if conn.read_plain(buf).await? == 0 {
            if matches!(framing, Framing::UntilClose) {
                break;
            }
            return Err(Failure::Closed);
        }
    }
    buf.drain(..pos.min(buf.len()));
    Ok(Response {
        status: head.status,
        reusable: head.backend_keep_alive && !matches!(framing, Framing::UntilClose),
    })
}
