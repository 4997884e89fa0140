//! Starts the real `hare` binary on an ephemeral loopback port, and a raw AMQP client built on
//! Hare's own codec for protocol-edge tests.
#![allow(dead_code)]

use bytes::BytesMut;
use hare::amqp::frame::{parse_frame, write_method, Frame, PROTOCOL_HEADER};
use hare::amqp::method::*;
use hare::amqp::Method;
use hare::types::{FieldTable, LongStr};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the broker with more command-line arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("hare-rs-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("hare.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        // No MQTT or stream protocol listener unless `extra` asks for one (their defaults
        // would clash between tests).
        let mqtt_off = ["--mqtt-port", "--mqtt-ws-port", "--stream-port"]
            .into_iter()
            .filter(|k| !extra.contains(k))
            .flat_map(|k| [k, "0"]);
        let child = Command::new(env!("CARGO_BIN_EXE_hare"))
            .args(["--port", "0", "--management-port", "0", "--log", "info"])
            .args(mqtt_off)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .stdout(Stdio::from(log_file.try_clone().expect("clone")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start hare");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("AMQP listening on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                break digits.parse().expect("port");
            }
            assert!(Instant::now() < deadline, "hare did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        };
        TestServer { child, port, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hare.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A blocking AMQP peer that writes whatever bytes a test wants.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        Raw { stream, buf: BytesMut::new() }
    }

    /// Connects and completes the handshake with the given heartbeat.
    pub fn open_with_heartbeat(port: u16, heartbeat: u16) -> Self {
        let mut raw = Raw::connect(port);
        raw.send(PROTOCOL_HEADER);
        assert!(matches!(raw.method(), Some((0, Method::ConnectionStart(_)))));
        raw.send_method(
            0,
            ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: LongStr::from("\0guest\0guest"),
                locale: "en_US".into(),
            },
        );
        let tune = match raw.method() {
            Some((0, Method::ConnectionTune(t))) => t,
            other => panic!("expected tune, got {other:?}"),
        };
        raw.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat });
        raw.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() });
        assert!(matches!(raw.method(), Some((0, Method::ConnectionOpenOk(_)))));
        raw
    }

    pub fn open(port: u16) -> Self {
        Self::open_with_heartbeat(port, 0)
    }

    /// Opens a channel and waits for open-ok.
    pub fn open_channel(&mut self, ch: u16) {
        self.send_method(ch, ChannelOpen::default());
        match self.method() {
            Some((c, Method::ChannelOpenOk(_))) if c == ch => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // The broker may already have closed the socket; tests then read the close.
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_method(&mut self, ch: u16, m: impl Into<Method>) {
        let mut b = BytesMut::new();
        write_method(&mut b, ch, &m.into());
        self.send(&b);
    }

    /// The next frame, or None at end of stream.
    pub fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, 1 << 30).expect("broker sent a malformed frame") {
                return Some(f);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next method frame (skipping heartbeats and content), or None at end of stream.
    pub fn method(&mut self) -> Option<(u16, Method)> {
        loop {
            match self.frame()? {
                Frame::Method(ch, payload) => return Some((ch, Method::decode(payload).expect("decodable method"))),
                _ => continue,
            }
        }
    }

    /// Reads until connection.close; answers close-ok; returns (code, text).
    pub fn expect_connection_close(&mut self) -> (u16, String) {
        loop {
            match self.method() {
                Some((0, Method::ConnectionClose(c))) => {
                    self.send_method(0, ConnectionCloseOk {});
                    return (c.reply_code, c.reply_text.to_string());
                }
                Some(_) => continue,
                None => panic!("connection ended without connection.close"),
            }
        }
    }

    pub fn expect_channel_close(&mut self, ch: u16) -> (u16, String) {
        loop {
            match self.method() {
                Some((c, Method::ChannelClose(m))) if c == ch => {
                    self.send_method(ch, ChannelCloseOk {});
                    return (m.reply_code, m.reply_text.to_string());
                }
                Some(_) => continue,
                None => panic!("connection ended without channel.close"),
            }
        }
    }

    /// True once the broker has closed the socket.
    pub fn expect_eof(&mut self) {
        while self.frame().is_some() {}
    }
}

/// A fresh connection can still declare and use a queue: the broker is healthy.
pub fn assert_healthy(port: u16) {
    let mut raw = Raw::open(port);
    raw.open_channel(1);
    raw.send_method(1, QueueDeclare { queue: "".into(), exclusive: true, ..Default::default() });
    match raw.method() {
        Some((1, Method::QueueDeclareOk(_))) => {}
        other => panic!("broker unhealthy: {other:?}"),
    }
}
