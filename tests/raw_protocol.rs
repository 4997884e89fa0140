//! Protocol edges and malformed input over a raw socket: each gets RabbitMQ's error, the
//! offender is cut off, and other connections keep working.

mod common;

use bytes::{BufMut, BytesMut};
use common::{assert_healthy, Raw, TestServer};
use hare::amqp::frame::{write_content, write_method, Frame, PROTOCOL_HEADER};
use hare::amqp::method::*;
use hare::amqp::Method;
use hare::types::{BasicProperties, FieldTable, FieldValue};
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn wrong_protocol_header_gets_ours_back() {
    let server = TestServer::start();
    let mut raw = Raw::connect(server.port);
    raw.send(b"GET / HTTP/1.1\r\n\r\n");
    let mut got = Vec::new();
    raw.stream.read_to_end(&mut got).expect("read");
    assert_eq!(&got[..], PROTOCOL_HEADER);
    assert_healthy(server.port);
}

fn frame_error_case(bytes: &[u8], expect_code: u16, expect_text: &str) {
    let server = TestServer::start();
    let bystander = {
        let mut b = Raw::open(server.port);
        b.open_channel(1);
        b
    };
    let mut raw = Raw::open(server.port);
    raw.send(bytes);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, expect_code, "{text}");
    assert!(text.contains(expect_text), "{text}");
    raw.expect_eof();
    assert_healthy(server.port);
    drop(bystander);
}

#[test]
fn garbage_and_bad_frames_are_cut_off() {
    frame_error_case(&[9, 0, 0, 0, 0, 0, 0, 0xCE], 501, "unknown frame type 9");
    frame_error_case(&[8, 0, 0, 0, 0, 0, 0, 0x00], 501, "frame end octet");
    // Larger than frame_max: refused from the header alone, nothing is buffered.
    frame_error_case(&[1, 0, 1, 0x7f, 0xff, 0xff, 0xff], 501, "exceeds the negotiated frame_max");
    frame_error_case(&[8, 0, 5, 0, 0, 0, 0, 0xCE], 505, "heartbeat frame on channel 5");
    frame_error_case(b"\x01\x02\x03garbage-garbage-garbage", 501, "");
}

#[test]
fn truncated_frame_then_hang_up_harms_nobody() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.send(&[1, 0, 1, 0, 0, 0, 50, 0, 60]);
    drop(raw);
    assert_healthy(server.port);
}

#[test]
fn content_without_publish_is_unexpected_frame() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send(&[3, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE]);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 505, "{text}");
    assert!(text.contains("without a basic.publish"), "{text}");

    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    let mut b = BytesMut::new();
    write_content(&mut b, 1, &[0, 0], b"x", 4096);
    raw.send(&b);
    let (code, _) = raw.expect_connection_close();
    assert_eq!(code, 505);

    // A method where the content header should be.
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, BasicPublish { routing_key: "q".into(), ..Default::default() });
    raw.send_method(1, BasicQos { prefetch_count: 1, ..Default::default() });
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 505, "{text}");
    assert_healthy(server.port);
}

#[test]
fn unopened_channel_and_second_open_are_channel_errors() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.send_method(7, QueueDeclare { queue: "".into(), ..Default::default() });
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 504, "{text}");
    assert!(text.contains("expected 'channel.open'"), "{text}");

    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, ChannelOpen::default());
    let (code, text) = raw.expect_connection_close();
    assert_eq!((code, text.as_str()), (504, "CHANNEL_ERROR - second 'channel.open' seen"));
}

#[test]
fn undecodable_and_unknown_methods() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    // basic.qos with its arguments cut short.
    raw.send(&[1, 0, 1, 0, 0, 0, 6, 0, 60, 0, 10, 0, 0, 0xCE]);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 502, "{text}");

    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send(&[1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 99, 0xCE]);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 540, "{text}");
    assert!(text.contains("unknown method"), "{text}");
    assert_healthy(server.port);
}

#[test]
fn huge_declared_body_is_refused_without_buffering() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, BasicPublish { routing_key: "q".into(), ..Default::default() });
    let mut b = BytesMut::new();
    b.put_u8(2);
    b.put_u16(1);
    b.put_u32(14);
    b.put_u16(60);
    b.put_u16(0);
    b.put_u64(10 * 1024 * 1024 * 1024);
    b.put_u16(0);
    b.put_u8(0xCE);
    raw.send(&b);
    let (code, text) = raw.expect_channel_close(1);
    assert_eq!(code, 406, "{text}");
    assert!(text.contains("message size 10737418240 is larger than configured max size"), "{text}");
    // The connection itself goes on.
    raw.open_channel(2);
    assert_healthy(server.port);
}

#[test]
fn consumer_tag_reuse_and_immediate_are_connection_errors() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, QueueDeclare { queue: "tagq".into(), ..Default::default() });
    raw.method();
    for _ in 0..2 {
        raw.send_method(1, BasicConsume { queue: "tagq".into(), consumer_tag: "t".into(), ..Default::default() });
    }
    assert!(matches!(raw.method(), Some((1, Method::BasicConsumeOk(_)))));
    let (code, text) = raw.expect_connection_close();
    assert_eq!((code, text.as_str()), (530, "NOT_ALLOWED - attempt to reuse consumer tag 't'"));

    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, BasicPublish { routing_key: "tagq".into(), immediate: true, ..Default::default() });
    let mut b = BytesMut::new();
    write_content(&mut b, 1, &[0, 0], b"x", 4096);
    raw.send(&b);
    let (code, text) = raw.expect_connection_close();
    assert_eq!((code, text.as_str()), (540, "NOT_IMPLEMENTED - immediate=true"));
}

#[test]
fn every_field_type_reaches_the_consumer_byte_for_byte() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, QueueDeclare { queue: "bytes_q".into(), ..Default::default() });
    raw.method();
    let mut nested = FieldTable::new();
    nested.insert("deep", FieldValue::Array(vec![FieldValue::Void, FieldValue::F32(0.5)]));
    let mut headers = FieldTable::new();
    for (k, v) in [
        ("t", FieldValue::Bool(true)),
        ("b", FieldValue::I8(-3)),
        ("B", FieldValue::U8(200)),
        ("s", FieldValue::I16(-300)),
        ("u", FieldValue::U16(60000)),
        ("I", FieldValue::I32(-70000)),
        ("i", FieldValue::U32(3_000_000_000)),
        ("l", FieldValue::I64(-(1 << 50))),
        ("f", FieldValue::F32(1.25)),
        ("d", FieldValue::F64(-2.5e100)),
        ("D", FieldValue::Decimal(3, 314159)),
        ("S", FieldValue::string("ünïcödé")),
        ("x", FieldValue::ByteArray(bytes::Bytes::from_static(&[0, 255, 1]))),
        ("T", FieldValue::Timestamp(1_700_000_000)),
        ("V", FieldValue::Void),
        ("F", FieldValue::Table(nested)),
        ("A", FieldValue::Array(vec![FieldValue::I32(1), FieldValue::string("two")])),
    ] {
        headers.insert(k, v);
    }
    let props = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        content_encoding: Some("identity".into()),
        headers: Some(headers),
        delivery_mode: Some(1),
        priority: Some(9),
        correlation_id: Some("cid".into()),
        reply_to: Some("rq".into()),
        expiration: Some("100000".into()),
        message_id: Some("mid".into()),
        timestamp: Some(1234567890),
        kind: Some("type".into()),
        user_id: Some("guest".into()),
        app_id: Some("app".into()),
        cluster_id: Some("cluster".into()),
    };
    let raw_props = props.to_bytes();
    raw.send_method(1, BasicPublish { routing_key: "bytes_q".into(), ..Default::default() });
    let mut b = BytesMut::new();
    write_content(&mut b, 1, &raw_props, b"body", 4096);
    raw.send(&b);
    raw.send_method(1, BasicGet { queue: "bytes_q".into(), no_ack: true, ..Default::default() });
    assert!(matches!(raw.method(), Some((1, Method::BasicGetOk(_)))));
    match raw.frame() {
        Some(Frame::Header(1, h)) => {
            assert_eq!(h.properties, raw_props);
            assert_eq!(BasicProperties::decode(h.properties).unwrap(), props);
        }
        other => panic!("expected content header, got {other:?}"),
    }
    assert_eq!(raw.frame(), Some(Frame::Body(1, bytes::Bytes::from_static(b"body"))));
}

/// `n` publishes on channel 1 through the default exchange to `queue`, bodies 0, 1, 2...
/// (4 bytes each), as one buffer to send in one write.
fn publishes(queue: &str, n: u32) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..n {
        hare::amqp::frame::write_method(
            &mut b,
            1,
            &BasicPublish { routing_key: queue.into(), ..Default::default() }.into(),
        );
        write_content(&mut b, 1, &[0, 0], &i.to_be_bytes(), 4096);
    }
    b
}

#[test]
fn confirms_are_batched_with_multiple() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, QueueDeclare { queue: "confirm_q".into(), ..Default::default() });
    raw.method();
    raw.send_method(1, ConfirmSelect { nowait: false });
    assert!(matches!(raw.method(), Some((1, Method::ConfirmSelectOk(_)))));
    raw.send(&publishes("confirm_q", 500));
    let mut acks = 0;
    let mut highest = 0;
    while highest < 500 {
        match raw.method() {
            Some((1, Method::BasicAck(a))) => {
                acks += 1;
                assert!(a.delivery_tag > highest);
                highest = a.delivery_tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(highest, 500);
    assert!(acks < 500, "confirms were not batched: {acks} acks");
}

#[test]
fn silent_peer_is_disconnected_after_two_heartbeats() {
    let server = TestServer::start();
    let mut raw = Raw::open_with_heartbeat(server.port, 1);
    let start = Instant::now();
    let mut heartbeats = 0;
    while let Some(f) = raw.frame() {
        if f == Frame::Heartbeat(0) {
            heartbeats += 1;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "still connected");
    }
    assert!(heartbeats >= 1, "the broker sent no heartbeats");
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(server.log().contains("missed heartbeats"));
    assert_healthy(server.port);
}

#[test]
fn auth_failure_is_403_and_closes() {
    let server = TestServer::start();
    let mut raw = Raw::connect(server.port);
    raw.send(PROTOCOL_HEADER);
    assert!(matches!(raw.method(), Some((0, Method::ConnectionStart(_)))));
    raw.send_method(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0nope".into(),
            locale: "en_US".into(),
        },
    );
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 403);
    assert!(text.starts_with("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN"), "{text}");
    raw.expect_eof();
}

#[test]
fn many_connections_and_channels() {
    let server = TestServer::start();
    let mut conns: Vec<Raw> = (0..50).map(|_| Raw::open(server.port)).collect();
    for c in conns.iter_mut() {
        for ch in 1..=20 {
            c.open_channel(ch);
        }
    }
    let mut c = conns.pop().unwrap();
    c.send_method(1, ChannelClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
    assert!(matches!(c.method(), Some((1, Method::ChannelCloseOk(_)))));
    c.send_method(0, ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
    assert!(matches!(c.method(), Some((0, Method::ConnectionCloseOk(_)))));
    c.expect_eof();
    assert_healthy(server.port);
}

#[test]
fn channel_max_limits_open_channels() {
    let server = TestServer::start();
    let mut raw = Raw::connect(server.port);
    raw.send(PROTOCOL_HEADER);
    raw.method();
    raw.send_method(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        },
    );
    raw.method();
    raw.send_method(0, ConnectionTuneOk { channel_max: 2, frame_max: 131072, heartbeat: 0 });
    raw.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() });
    raw.method();
    raw.open_channel(1);
    raw.open_channel(1000);
    raw.send_method(3, ChannelOpen::default());
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 530);
    assert_eq!(text, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)");
}

/// Message headers nested past the depth bound (64) are a 502 syntax error for that
/// connection alone; a header table as large as a frame allows is taken whole.
#[test]
fn header_tables_are_bounded_in_depth_and_size() {
    let server = TestServer::start();
    let mut inner = FieldTable::new();
    for _ in 0..100 {
        let mut outer = FieldTable::new();
        outer.insert("n", FieldValue::Table(inner));
        inner = outer;
    }
    let props = BasicProperties { headers: Some(inner), ..Default::default() };
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, BasicPublish { routing_key: "q".into(), ..Default::default() });
    let mut b = BytesMut::new();
    write_content(&mut b, 1, &props.to_bytes(), b"x", 131072);
    raw.send(&b);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 502, "{text}");
    assert!(text.contains("nests too deeply"), "{text}");

    // 2,000 entries (about 60 KB of headers) in one content header frame: accepted.
    let mut wide = FieldTable::new();
    for i in 0..2000 {
        wide.insert(&format!("header-{i:05}"), FieldValue::string("value-value-value"));
    }
    let props = BasicProperties { headers: Some(wide), ..Default::default() };
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, BasicPublish { routing_key: "nowhere".into(), ..Default::default() });
    let mut b = BytesMut::new();
    write_content(&mut b, 1, &props.to_bytes(), b"x", 131072);
    raw.send(&b);
    assert_healthy(server.port);
    raw.open_channel(2);
    assert_healthy(server.port);
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes that reach the broker in one read, from a connection that has not published
/// yet while an alarm is raised, are held at the first one (as RabbitMQ's reader holds them),
/// and run once the alarm clears, without the peer sending anything more.
#[test]
fn publishes_read_at_once_wait_behind_an_alarm_and_run_when_it_clears() {
    let probe = std::env::temp_dir();
    // 1 GiB below what is free now; a 3 GiB ballast crosses it even if space comes back.
    let free = hare::net::alarms::free_disk_bytes(&probe).expect("free disk space");
    let limit = free.saturating_sub(1 << 30).to_string();
    let server = TestServer::start_with(&["--disk-free-limit", &limit]);
    let mut observer = Raw::open(server.port);
    observer.open_channel(1);
    observer.send_method(1, QueueDeclare { queue: "alarm_q".into(), ..Default::default() });
    assert!(matches!(observer.method(), Some((1, Method::QueueDeclareOk(_)))));
    let count = |observer: &mut Raw| {
        observer.send_method(1, QueueDeclare { queue: "alarm_q".into(), passive: true, ..Default::default() });
        match observer.method() {
            Some((1, Method::QueueDeclareOk(ok))) => ok.message_count,
            other => panic!("expected declare-ok, got {other:?}"),
        }
    };

    let mut publisher = Raw::open(server.port);
    publisher.open_channel(1);
    let ballast = server.dir.join("ballast");
    let status = std::process::Command::new("fallocate")
        .args(["-l", &(3u64 << 30).to_string()])
        .arg(&ballast)
        .status()
        .expect("fallocate");
    assert!(status.success());
    wait_until("the disk alarm", || server.log().contains("blocking publishers: disk free space"));

    // 50 publishes and a passive declare in one write: the broker reads them at once.
    let mut b = publishes("alarm_q", 50);
    hare::amqp::frame::write_method(
        &mut b,
        1,
        &QueueDeclare { queue: "alarm_q".into(), passive: true, ..Default::default() }.into(),
    );
    publisher.send(&b);
    // The observer's passive declares go through the same broker; while the alarm lasts,
    // at most the first publish is in.
    for _ in 0..20 {
        let n = count(&mut observer);
        assert!(n <= 1, "{n} publishes went past the alarm");
    }

    std::fs::remove_file(&ballast).expect("remove ballast");
    wait_until("the alarm to clear", || server.log().contains("resource alarm cleared"));
    // Everything held runs: the publisher's own passive declare answers with all 50 in.
    match publisher.method() {
        Some((1, Method::QueueDeclareOk(ok))) => assert_eq!(ok.message_count, 50),
        other => panic!("expected declare-ok, got {other:?}"),
    }
    assert_eq!(count(&mut observer), 50);
}

/// Large bodies sent in one burst are read in 1 MiB chunks, and the body frames cut by a
/// chunk's end are passed on in pieces (`amqp::reader`): every good message arrives, and
/// a body frame with a bad end octet is a frame error that never completes its message.
#[test]
fn a_burst_of_large_bodies_with_a_bad_frame_end_last() {
    let server = TestServer::start();
    let mut raw = Raw::open(server.port);
    raw.open_channel(1);
    raw.send_method(1, QueueDeclare { queue: "split_q".into(), ..Default::default() });
    assert!(matches!(raw.method(), Some((1, Method::QueueDeclareOk(_)))));
    let mut burst = BytesMut::new();
    for i in 0..24u32 {
        let body: Vec<u8> = (0..100_000u32 + i * 1_000).map(|b| (b ^ i) as u8).collect();
        write_method(&mut burst, 1, &BasicPublish { routing_key: "split_q".into(), ..Default::default() }.into());
        write_content(&mut burst, 1, &[0, 0], &body, 131_072);
    }
    write_method(&mut burst, 1, &BasicPublish { routing_key: "split_q".into(), ..Default::default() }.into());
    write_content(&mut burst, 1, &[0, 0], &[9u8; 90_000], 131_072);
    let last = burst.len() - 1;
    burst[last] = 0x00;
    raw.send(&burst);
    let (code, text) = raw.expect_connection_close();
    assert_eq!(code, 501, "{text}");
    assert!(text.contains("frame end octet"), "{text}");

    let mut check = Raw::open(server.port);
    check.open_channel(1);
    check.send_method(1, QueueDeclare { queue: "split_q".into(), passive: true, ..Default::default() });
    match check.method() {
        Some((1, Method::QueueDeclareOk(ok))) => assert_eq!(ok.message_count, 24),
        other => panic!("expected declare-ok, got {other:?}"),
    }
}
