//! Raw bytes as an HTTP/1.1 request to the management API: parsed by httparse (hyper's
//! parser), then handed to the API's router with its authentication, as the listener does.
//! Every path, method, query, header and body reaches the handlers (the JSON bodies of
//! declares, users, permissions, definitions imports, publishes, gets). Nothing may panic,
//! and every answer is a status the API gives (never a 5xx but for a queue's I/O).
#![no_main]
use axum::body::Body;
use hare::broker::Broker;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

/// A fresh broker in memory for each input, so an input that deletes guest or vhost `/`
/// does not change what the next one does (and a crash reproduces from its input alone).
fn app() -> axum::Router {
    let broker = Arc::new(Broker::new());
    let node = hare::http::NodeInfo {
        node: "hare@fuzz".into(),
        amqp_port: 5672,
        http_port: 15672,
        amqps_port: None,
        https_port: None,
        bind: "127.0.0.1".into(),
        memory_limit: 1 << 30,
        disk_free_limit: 0,
        data_dir: std::env::temp_dir(),
        started_at_ms: 0,
        config_file: None,
        external_auth: false,
        other_listeners: Vec::new(),
    };
    let peer = "127.0.0.1:40000".parse().expect("an address");
    hare::http::service(broker, node, peer)
}

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = parsed.parse(data) else { return };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else { return };
    let mut request = axum::http::Request::builder().method(method).uri(path);
    // Every request logs in as guest unless it brings its own Authorization header.
    let mut authorised = false;
    for h in parsed.headers.iter() {
        authorised |= h.name.eq_ignore_ascii_case("authorization");
        request = request.header(h.name, h.value);
    }
    if !authorised {
        request = request.header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=");
    }
    let Ok(request) = request.body(Body::from(data[head..].to_vec())) else { return };
    let response = runtime()
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), app().oneshot(request)).await });
    let response = response.expect("the API answers within 5 s").expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(status != 500 || path.contains("/get") || path.contains("/publish"), "{status} for {method} {path}");
});
