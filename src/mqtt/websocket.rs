//! MQTT over WebSocket, as RabbitMQ's Web MQTT plugin serves it to browsers: an HTTP upgrade
//! at [`PATH`] on a port of its own, then MQTT packets carried in binary WebSocket messages.
//!
//! A packet may span several messages and a message may hold several packets, so the
//! messages are read back as one byte stream ([`ByteStream`]) and the connection code is the
//! same as over TCP. As RabbitMQ does, text messages are ignored (the MQTT specification
//! would close the connection) and the client's `Sec-WebSocket-Protocol` is answered with
//! `mqtt` when it offers it.

use bytes::{Bytes, BytesMut};
use futures_core::Stream as _;
use futures_sink::Sink;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The path MQTT is served at (RabbitMQ's `web_mqtt.ws_path`).
pub const PATH: &str = "/ws";
/// The subprotocols a client may ask for, the first preferred: `mqtt` (MQTT 3.1.1 and 5.0)
/// and `mqttv3.1` (what 3.1 clients ask for).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// How long a client has to complete the HTTP upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The read buffer of each connection: most are devices and dashboards that send little,
/// and a busy one reads in several steps.
const READ_BUFFER: usize = 4096;

/// Answers the HTTP upgrade on `stream`: a WebSocket at [`PATH`] (others get 404), its
/// messages bounded by `max_message` bytes. None if the client does not complete it.
pub async fn accept<S>(stream: S, max_message: usize) -> Option<ByteStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Each message is written at once: the connection's writer task already gathers
        // what is queued into one write.
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, answer, Some(config));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => Some(ByteStream { ws, unread: Bytes::new() }),
        Ok(Err(e)) => {
            tracing::debug!("Web MQTT upgrade refused: {e}");
            None
        }
        Err(_) => None,
    }
}

/// The upgrade's answer: refused off [`PATH`]; the subprotocol chosen from what is offered.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback has
fn answer(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        let mut refusal = ErrorResponse::new(Some("Not Found".into()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .collect();
    let chosen = SUBPROTOCOLS.iter().find(|p| offered.contains(p)).copied().or(offered.first().copied());
    if let Some(p) = chosen.and_then(|p| HeaderValue::from_str(p).ok()) {
        response.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(response)
}

/// The binary messages of a WebSocket read and written as a byte stream.
pub struct ByteStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message received, not yet read.
    unread: Bytes,
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                // End of stream: the peer closed, or closed the WebSocket.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => this.unread = b,
                // Text is ignored, as RabbitMQ ignores it; pings are answered by tungstenite.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ByteStream<S> {
    /// Sends `bytes` as one binary message, once the WebSocket takes one.
    fn poll_send(&mut self, cx: &mut Context<'_>, bytes: impl FnOnce() -> Bytes) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        let bytes = bytes();
        let n = bytes.len();
        Pin::new(&mut self.ws).start_send(Message::Binary(bytes)).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, || Bytes::copy_from_slice(buf))
    }

    /// The slices of one vectored write go out as one message.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, || {
            let mut joined = BytesMut::with_capacity(bufs.iter().map(|b| b.len()).sum());
            for b in bufs {
                joined.extend_from_slice(b);
            }
            joined.freeze()
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(io_error)
    }
}
