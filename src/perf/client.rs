//! A minimal AMQP 0-9-1 client on Hare's own codec, made for load generation: it batches
//! publishes into large writes and parses deliveries without copying bodies.

use crate::amqp::frame::{parse_frame, write_content, write_method, Frame, PROTOCOL_HEADER};
use crate::amqp::method::*;
use crate::amqp::Method;
use crate::types::{FieldTable, LongStr, ShortStr};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Either half of a connection, over TCP or TLS. One virtual call per read or write of a
/// whole buffer, which is nothing beside the syscall.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad uri '{0}': expected amqp://user:pass@host:port/vhost (or amqps://, or mqtt://user:pass@host:port)")]
    Uri(String),
    #[error("an amqps:// uri needs --tls-ca, the CA file to verify the broker's certificate with")]
    NoCa,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("closed by the broker: {0} {1}")]
    Closed(u16, String),
}

/// Where to connect, from an amqp:// or amqps:// URI.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// amqps://: connect with TLS (the configuration is given with [`Target::with_tls`]).
    pub tls: bool,
    /// mqtt://: an MQTT broker (the vhost is not used).
    pub mqtt: bool,
    /// rabbitmq-stream://: RabbitMQ's stream protocol.
    pub stream: bool,
    tls_config: Option<TlsConfig>,
}

/// A rustls client configuration; targets compare equal whatever theirs is.
#[derive(Clone)]
struct TlsConfig(Arc<rustls::ClientConfig>);

impl PartialEq for TlsConfig {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl Target {
    /// The TLS client configuration an amqps:// target connects with.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Target {
        self.tls_config = Some(TlsConfig(config));
        self
    }

    pub fn parse(uri: &str) -> Result<Target, ClientError> {
        let bad = || ClientError::Uri(uri.to_string());
        let stream_rest = uri.strip_prefix("rabbitmq-stream://");
        let stream = stream_rest.is_some();
        let (tls, mqtt, rest) = if let Some(rest) = uri.strip_prefix("amqps://") {
            (true, false, rest)
        } else if let Some(rest) = uri.strip_prefix("mqtt://") {
            (false, true, rest)
        } else if let Some(rest) = stream_rest {
            (false, false, rest)
        } else {
            (false, false, uri.strip_prefix("amqp://").ok_or_else(bad)?)
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => a.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())).ok_or_else(bad)?,
            None => ("guest".into(), "guest".into()),
        };
        let (hostport, vhost) = match rest.split_once('/') {
            Some((h, v)) if !v.is_empty() => (h, v.replace("%2f", "/").replace("%2F", "/")),
            Some((h, _)) => (h, "/".to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None if stream => (hostport.to_string(), 5552),
            None => (hostport.to_string(), [[5672, 5671], [1883, 8883]][mqtt as usize][tls as usize]),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target { host, port, user, password, vhost, tls, mqtt, stream, tls_config: None })
    }
}

pub struct Reader {
    rd: ReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// The next frame; heartbeats are returned too.
    pub async fn frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, 1 << 24).map_err(|e| ClientError::Protocol(e.to_string()))? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 32 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Protocol("connection closed".into()));
            }
        }
    }

    /// The next method frame, failing on connection or channel close.
    pub async fn method(&mut self) -> Result<(u16, Method), ClientError> {
        loop {
            if let Frame::Method(ch, p) = self.frame().await? {
                let m = Method::decode(p).map_err(|e| ClientError::Protocol(e.to_string()))?;
                return match m {
                    Method::ConnectionClose(c) => Err(ClientError::Closed(c.reply_code, c.reply_text.to_string())),
                    Method::ChannelClose(c) => Err(ClientError::Closed(c.reply_code, c.reply_text.to_string())),
                    m => Ok((ch, m)),
                };
            }
        }
    }
}

pub struct Writer {
    wr: WriteHalf,
    pub buf: BytesMut,
    pub frame_max: usize,
}

impl Writer {
    pub fn method(&mut self, ch: u16, m: impl Into<Method>) {
        write_method(&mut self.buf, ch, &m.into());
    }
    pub fn publish(&mut self, ch: u16, exchange: &ShortStr, routing_key: &ShortStr, props: &[u8], body: &[u8]) {
        self.method(
            ch,
            BasicPublish {
                ticket: 0,
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                mandatory: false,
                immediate: false,
            },
        );
        write_content(&mut self.buf, ch, props, body, self.frame_max);
    }
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// An open connection with channel 1 open.
pub struct Client {
    pub reader: Reader,
    pub writer: Writer,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, ClientError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        let (rd, wr): (ReadHalf, WriteHalf) = if target.tls {
            let config = target.tls_config.as_ref().ok_or(ClientError::NoCa)?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| ClientError::Protocol(format!("server name {}: {e}", target.host)))?;
            let tls = tokio_rustls::TlsConnector::from(config.0.clone()).connect(name, stream).await?;
            let (rd, wr) = tokio::io::split(tls);
            (Box::new(rd), Box::new(wr))
        } else {
            let (rd, wr) = stream.into_split();
            (Box::new(rd), Box::new(wr))
        };
        let mut c = Client {
            reader: Reader { rd, buf: BytesMut::with_capacity(256 * 1024) },
            writer: Writer { wr, buf: BytesMut::with_capacity(256 * 1024), frame_max: 131072 },
        };
        c.writer.buf.extend_from_slice(PROTOCOL_HEADER);
        c.writer.flush().await?;
        match c.reader.method().await? {
            (0, Method::ConnectionStart(_)) => {}
            other => return Err(ClientError::Protocol(format!("expected connection.start, got {other:?}"))),
        }
        let response = format!("\0{}\0{}", target.user, target.password);
        c.writer.method(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: LongStr(Bytes::from(response.into_bytes())),
                locale: "en_US".into(),
            },
        );
        c.writer.flush().await?;
        let tune = match c.reader.method().await? {
            (0, Method::ConnectionTune(t)) => t,
            other => return Err(ClientError::Protocol(format!("expected connection.tune, got {other:?}"))),
        };
        let frame_max = if tune.frame_max == 0 { 131072 } else { tune.frame_max.min(131072) };
        c.writer.frame_max = frame_max as usize;
        c.writer.method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max, heartbeat: 0 });
        c.writer.method(0, ConnectionOpen { virtual_host: target.vhost.as_str().into(), ..Default::default() });
        c.writer.method(1, ChannelOpen::default());
        c.writer.flush().await?;
        loop {
            match c.reader.method().await? {
                (0, Method::ConnectionOpenOk(_)) => {}
                (1, Method::ChannelOpenOk(_)) => break,
                other => return Err(ClientError::Protocol(format!("unexpected {other:?} while opening"))),
            }
        }
        Ok(c)
    }

    /// Sends a method on channel 1 and waits for its reply.
    pub async fn call(&mut self, m: impl Into<Method>) -> Result<Method, ClientError> {
        self.writer.method(1, m);
        self.writer.flush().await?;
        loop {
            match self.reader.method().await? {
                (1, Method::BasicDeliver(_)) => continue,
                (1, reply) => return Ok(reply),
                _ => continue,
            }
        }
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.writer.method(0, ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
        self.writer.flush().await?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Ok(f) = self.reader.frame().await {
                if let Frame::Method(0, p) = f {
                    if let Ok(Method::ConnectionCloseOk(_)) = Method::decode(p) {
                        break;
                    }
                }
            }
        })
        .await;
        Ok(())
    }

    pub fn split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            Target::parse("amqp://u:p@h:1234/v").unwrap(),
            Target {
                host: "h".into(),
                port: 1234,
                user: "u".into(),
                password: "p".into(),
                vhost: "v".into(),
                tls: false,
                mqtt: false,
                stream: false,
                tls_config: None
            }
        );
        let t = Target::parse("rabbitmq-stream://u:p@h/%2f").unwrap();
        assert_eq!((t.stream, t.port, t.vhost.as_str()), (true, 5552, "/"));
        let t = Target::parse("amqps://u:p@localhost/v").unwrap();
        assert_eq!((t.tls, t.port), (true, 5671));
        let t = Target::parse("amqp://127.0.0.1").unwrap();
        assert_eq!((t.port, t.user.as_str(), t.vhost.as_str()), (5672, "guest", "/"));
        assert_eq!(Target::parse("amqp://guest:guest@localhost:5672/%2f").unwrap().vhost, "/");
        let t = Target::parse("mqtt://u:p@127.0.0.1").unwrap();
        assert_eq!((t.mqtt, t.tls, t.port, t.user.as_str()), (true, false, 1883, "u"));
        assert!(Target::parse("http://x").is_err());
        assert!(Target::parse("amqp://h:notaport").is_err());
    }
}
