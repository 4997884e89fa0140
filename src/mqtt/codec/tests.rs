use super::*;
use bytes::BytesMut;
use rand::{Rng, SeedableRng};

fn round_trip(p: &Packet, level: u8) -> Result<Packet> {
    let mut out = BytesMut::new();
    encode(&mut out, p, level);
    let (first, len, header) = fixed_header(&out)?.expect("a whole fixed header");
    assert_eq!(header + len, out.len(), "remaining length of {}", p.name());
    decode(first, out.freeze().slice(header..), level)
}

fn props(rng: &mut impl Rng) -> Properties {
    let mut p = Properties::default();
    if rng.gen_bool(0.5) {
        p.content_type = Some("text/plain".into());
        p.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
        p.response_topic = Some("reply/here".into());
        p.message_expiry = Some(rng.gen());
    }
    if rng.gen_bool(0.3) {
        p.user = vec![("k".into(), "v".into()), ("k".into(), "second".into())];
    }
    if rng.gen_bool(0.2) {
        p.topic_alias = Some(rng.gen_range(1..10));
        p.payload_format = Some(1);
    }
    p
}

fn random_packet(rng: &mut impl Rng, level: u8) -> Packet {
    let v5 = level == V5;
    let p = |rng: &mut _| if v5 { props(rng) } else { Properties::default() };
    let id = rng.gen_range(1..=u16::MAX);
    match rng.gen_range(0..10) {
        0 => Packet::Connect(Box::new(Connect {
            level,
            clean_start: rng.gen(),
            keep_alive: rng.gen(),
            client_id: format!("c{}", rng.gen::<u16>()),
            will: rng.gen_bool(0.5).then(|| Will {
                topic: "will/topic".into(),
                payload: Bytes::from(vec![7; rng.gen_range(0..300)]),
                qos: rng.gen_range(0..3),
                retain: rng.gen(),
                properties: p(rng),
            }),
            username: Some("u".into()),
            password: rng.gen_bool(0.5).then(|| Bytes::from_static(b"pw")),
            properties: p(rng),
        })),
        1 => {
            let qos = rng.gen_range(0..3);
            Packet::Publish(Publish {
                dup: qos > 0 && rng.gen(),
                qos,
                retain: rng.gen(),
                topic: "a/b/c".into(),
                packet_id: (qos > 0).then_some(id),
                properties: p(rng),
                payload: Bytes::from(vec![1; rng.gen_range(0..20_000)]),
            })
        }
        2 => Packet::PubAck(Ack { packet_id: id, code: 0, properties: Properties::default() }),
        3 => Packet::PubRel(Ack {
            packet_id: id,
            code: if v5 { reason::PACKET_IDENTIFIER_NOT_FOUND } else { 0 },
            properties: Properties::default(),
        }),
        4 => Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: p(rng),
            filters: vec![
                Subscription {
                    filter: "a/+".into(),
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                },
                Subscription {
                    filter: "b/#".into(),
                    qos: rng.gen_range(0..3),
                    no_local: v5 && rng.gen(),
                    retain_as_published: v5 && rng.gen(),
                    retain_handling: if v5 { rng.gen_range(0..3) } else { 0 },
                },
            ],
        }),
        5 => Packet::SubAck(SubAck { packet_id: id, properties: p(rng), codes: vec![0, 1, 0x80] }),
        6 => Packet::Unsubscribe(Unsubscribe { packet_id: id, properties: p(rng), filters: vec!["a/+".into()] }),
        7 => Packet::UnsubAck(UnsubAck {
            packet_id: id,
            properties: p(rng),
            codes: if v5 { vec![0, 0x11] } else { vec![] },
        }),
        8 => Packet::PingReq,
        _ => Packet::Disconnect(Disconnect {
            code: if v5 { reason::DISCONNECT_WITH_WILL } else { 0 },
            properties: Properties::default(),
        }),
    }
}

/// Every packet a peer may send decodes to what was encoded, at every protocol level.
#[test]
fn random_packets_round_trip() {
    for seed in 0..300u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for level in [V31, V311, V5] {
            for _ in 0..20 {
                let p = random_packet(&mut rng, level);
                assert_eq!(round_trip(&p, level).as_ref(), Ok(&p), "seed {seed} level {level}");
            }
        }
    }
}

/// Cut anywhere, or with a byte changed, a packet never panics the decoder.
#[test]
fn truncated_and_corrupted_packets_are_errors_not_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let level = [V311, V5][rng.gen_range(0..2)];
        let mut out = BytesMut::new();
        encode(&mut out, &random_packet(&mut rng, level), level);
        let mut bytes = out.to_vec();
        if rng.gen_bool(0.5) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let cut = rng.gen_range(0..=bytes.len());
        if let Ok(Some((first, len, header))) = fixed_header(&bytes[..cut]) {
            let end = (header + len).min(cut);
            let _ = decode(first, Bytes::copy_from_slice(&bytes[header..end]), level);
        }
    }
}

#[test]
fn the_specifications_malformed_packets() {
    let d = |bytes: &[u8], level| {
        let (first, len, header) = fixed_header(bytes).unwrap().unwrap();
        decode(first, Bytes::copy_from_slice(&bytes[header..header + len]), level)
    };
    // A remaining length of five bytes.
    assert!(fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    // PUBLISH at QoS 3.
    assert_eq!(d(&[0x36, 0x05, 0, 1, b'a', 0, 1], V311).unwrap_err().reason, reason::MALFORMED_PACKET);
    // PUBLISH at QoS 1 with packet identifier 0.
    assert!(d(&[0x32, 0x05, 0, 1, b'a', 0, 0], V311).is_err());
    // SUBSCRIBE with the wrong reserved flags.
    assert!(d(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], V311).is_err());
    // PINGREQ with a body.
    assert!(d(&[0xC0, 0x01, 0], V311).is_err());
    // A string with U+0000.
    assert!(d(&[0x30, 0x04, 0, 2, b'a', 0], V311).is_err());
    // A v5 property given twice.
    assert_eq!(
        d(&[0x30, 0x0E, 0, 1, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], V5).map_err(|e| e.reason),
        Err(reason::PROTOCOL_ERROR)
    );
    // An unknown protocol level is its own reason code.
    let mut c = BytesMut::new();
    encode(
        &mut c,
        &Packet::Connect(Box::new(Connect {
            level: 9,
            clean_start: true,
            keep_alive: 0,
            client_id: "x".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        V311,
    );
    assert_eq!(d(&c, 0).unwrap_err().reason, reason::UNSUPPORTED_PROTOCOL_VERSION);
}

#[test]
fn a_publish_header_matches_the_whole_packet() {
    let p = Publish {
        dup: false,
        qos: 1,
        retain: true,
        topic: "t/x".into(),
        packet_id: Some(9),
        properties: Properties { content_type: Some("a".into()), ..Default::default() },
        payload: Bytes::from(vec![3; 300]),
    };
    for level in [V311, V5] {
        let mut whole = BytesMut::new();
        encode(&mut whole, &Packet::Publish(p.clone()), level);
        let mut head = BytesMut::new();
        let size = publish_header(&mut head, &p, p.payload.len(), level);
        head.extend_from_slice(&p.payload);
        assert_eq!(head, whole);
        assert_eq!(size, whole.len());
    }
}
