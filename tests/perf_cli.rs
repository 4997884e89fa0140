//! `hare perf` against the real server: option checking and short runs.

mod common;

use common::TestServer;
use std::process::Command;

fn perf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hare")).arg("perf").args(args).output().expect("run hare perf")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "hare perf failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

#[test]
fn bad_options_are_refused() {
    for (args, text) in [
        (vec!["--size", "4"], "--size must be at least 8"),
        (vec!["--queues", "0"], "--queues must be at least 1"),
        (vec!["--producers", "0", "--consumers", "0"], "nothing to do"),
        (vec!["--uri", "http://x"], "bad uri"),
        (vec!["--duration", "0"], "--duration must be positive"),
        (vec!["--stream"], "stream consumers need --ack manual and a --prefetch"),
    ] {
        let out = perf(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(text),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = perf(&["--exchange", "nonsense"]);
    assert!(!out.status.success());
}

#[test]
fn short_run_publishes_consumes_and_measures() {
    let server = TestServer::start();
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", server.port);
    let svg = server.dir.join("run.svg");
    let out = perf(&["--uri", &uri, "--duration", "1", "--json", "--plot", svg.to_str().unwrap()]);
    let s = json(&out);
    assert!(s["published"].as_u64().unwrap() > 1000);
    assert!(s["consumed"].as_u64().unwrap() > 1000);
    assert!(s["e2e_latency"]["p99_ms"].as_f64().is_some());
    assert!(!s["samples"].as_array().unwrap().is_empty());
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("polyline"));
}

#[test]
fn counted_confirmed_persistent_run_over_fanout() {
    let server = TestServer::start();
    let uri = format!("amqp://127.0.0.1:{}", server.port);
    let out = perf(&[
        "--uri",
        &uri,
        "--count",
        "2000",
        "--persistent",
        "--confirm",
        "64",
        "--ack",
        "manual",
        "--prefetch",
        "50",
        "--exchange",
        "fanout",
        "--queues",
        "3",
        "--consumers",
        "3",
        "--size",
        "100",
        "--duration",
        "30",
        "--json",
    ]);
    let s = json(&out);
    assert_eq!(s["published"].as_u64(), Some(2000));
    assert_eq!(s["confirmed"].as_u64(), Some(2000));
    assert_eq!(s["consumed"].as_u64(), Some(6000));
    // Every confirmed message's latency is counted, however many one multiple ack covers.
    assert_eq!(s["confirm_latency"]["count"].as_u64(), Some(2000));
    assert!(s["confirm_latency"]["p50_ms"].as_f64().is_some());
}

#[test]
fn a_stream_is_filled_then_replayed_from_first_by_two_consumers() {
    let server = TestServer::start();
    let uri = format!("amqp://127.0.0.1:{}", server.port);
    let common = ["--uri", &uri, "--stream", "--prefix", "st", "--duration", "30", "--json"];
    let fill = json(&perf(&[&common[..], &["--consumers", "0", "--count", "3000", "--confirm", "100"]].concat()));
    assert_eq!(fill["confirmed"].as_u64(), Some(3000));
    let replay = json(&perf(
        &[
            &common[..],
            &["--producers", "0", "--consumers", "2", "--count", "6000", "--offset", "first"],
            &["--ack", "manual", "--prefetch", "200"],
        ]
        .concat(),
    ));
    // Each consumer reads the whole stream: the messages stay after they are consumed.
    assert_eq!(replay["consumed"].as_u64(), Some(6000));
}

#[test]
fn the_stream_protocol_fills_a_stream_that_both_protocols_replay() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let server = TestServer::start_with(&["--stream-port", &port.to_string()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains("stream protocol listening") {
        assert!(std::time::Instant::now() < deadline, "no stream listener:\n{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let uri = format!("rabbitmq-stream://guest:guest@127.0.0.1:{port}/%2f");
    let common = ["--prefix", "sp", "--duration", "30", "--json", "--keep", "--size", "100"];
    let fill = json(&perf(
        &[&["--uri", &uri][..], &common, &["--consumers", "0", "--count", "3000", "--confirm", "100"]].concat(),
    ));
    assert_eq!(fill["confirmed"].as_u64(), Some(3000));
    // Two stream protocol consumers from the first offset: each reads the whole stream.
    let replay = json(&perf(
        &[
            &["--uri", &uri][..],
            &common,
            &["--producers", "0", "--consumers", "2", "--count", "6000", "--offset", "first"],
        ]
        .concat(),
    ));
    assert_eq!(replay["consumed"].as_u64(), Some(6000));
    // Skimming consumers (chunk headers read, the rest dropped unread) count the same.
    let skim = json(&perf(
        &[
            &["--uri", &uri][..],
            &common,
            &["--producers", "0", "--consumers", "2", "--count", "6000", "--offset", "first", "--skim"],
        ]
        .concat(),
    ));
    assert_eq!(skim["consumed"].as_u64(), Some(6000));
    // And an AMQP 0-9-1 stream consumer reads the same messages.
    let amqp = format!("amqp://127.0.0.1:{}", server.port);
    let args = ["--producers", "0", "--consumers", "1", "--count", "3000", "--offset", "first", "--stream"];
    let replay =
        json(&perf(&[&["--uri", &amqp][..], &common, &args, &["--ack", "manual", "--prefetch", "200"]].concat()));
    assert_eq!(replay["consumed"].as_u64(), Some(3000));
}

#[test]
fn idle_connections_are_held() {
    let server = TestServer::start();
    let uri = format!("amqp://127.0.0.1:{}", server.port);
    let s = json(&perf(&["--uri", &uri, "--idle-connections", "200", "--duration", "0.2", "--json"]));
    assert_eq!(s["idle_connections"].as_u64(), Some(200));
}

#[test]
fn idle_connections_with_consumers_are_held() {
    let server = TestServer::start();
    let uri = format!("amqp://127.0.0.1:{}", server.port);
    let s =
        json(&perf(&["--uri", &uri, "--idle-connections", "50", "--idle-consumers", "--duration", "0.2", "--json"]));
    assert_eq!(s["idle_connections"].as_u64(), Some(50));
}

#[test]
fn mqtt_runs_at_qos_0_and_1_count_what_they_move() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let server = TestServer::start_with(&["--mqtt-port", &port.to_string()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains("MQTT listening") {
        assert!(std::time::Instant::now() < deadline, "no MQTT listener:\n{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let uri = format!("mqtt://guest:guest@127.0.0.1:{port}");
    // QoS 1: every publish acknowledged and received once; two publishers fan in to one
    // subscriber and two more subscribers share the second topic.
    let out = perf(&[
        "--uri",
        &uri,
        "--qos",
        "1",
        "--confirm",
        "32",
        "--count",
        "3000",
        "--producers",
        "2",
        "--consumers",
        "3",
        "--queues",
        "2",
        "--duration",
        "30",
        "--json",
    ]);
    let s = json(&out);
    assert_eq!(s["published"], 6000);
    assert_eq!(s["confirmed"], 6000);
    // Topic 0: publisher 0 to subscribers 0 and 2; topic 1: publisher 1 to subscriber 1.
    assert_eq!(s["consumed"], 9000);
    assert!(s["confirm_latency"]["p99_ms"].as_f64().is_some());
    let s = json(&perf(&["--uri", &uri, "--qos", "0", "--count", "2000", "--duration", "30", "--json"]));
    assert_eq!((s["published"].as_u64(), s["consumed"].as_u64()), (Some(2000), Some(2000)));
    let s =
        json(&perf(&["--uri", &uri, "--idle-connections", "50", "--idle-consumers", "--duration", "0.2", "--json"]));
    assert_eq!(s["idle_connections"], 50);
    // --qos is MQTT's.
    let out = perf(&["--uri", &format!("amqp://127.0.0.1:{}", server.port), "--qos", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--qos is for MQTT"));
}
