//! The `hare` command: runs the broker.

use clap::Parser;
use hare::amqp::Server;
use hare::broker::Broker;
use hare::cli::{Cli, Command};
use hare::config::Config;
use hare::storage::DiskStorage;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Perf(perf)) => return run_perf(perf),
        Some(Command::Ctl(ctl)) => return hare::ctl::run(ctl),
        None => cli.server,
    };
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hare: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log_filter(&config.log)).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let limit = match hare::net::alarms::raise_open_files_limit() {
        Some((before, now, _)) if before != now => {
            tracing::info!("open files limit raised from {before} to {now} (the hard limit)");
            now
        }
        Some((_, now, hard)) => {
            tracing::info!("open files limit {now} (hard limit {hard})");
            now
        }
        None => {
            tracing::warn!("cannot read the open files limit; assuming 1024");
            1024
        }
    };
    let fds = hare::net::alarms::FdBudget::new(limit);
    hare::storage::syncer::set_open_files_budget(fds.files as usize);
    tracing::info!("file descriptors: up to {} for queue files, {} for connections", fds.files, fds.connections);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // An idle worker gives back the pooled read buffers once a burst of large messages is over.
        .on_thread_park(|| hare::net::read_buf::trim_if_idle(std::time::Instant::now()))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keys = match &config.encryption_key_file {
        None => None,
        Some(path) => match hare::storage::cipher::KeyRing::load(path, &config.encryption_previous_key_files) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let storage = match DiskStorage::open(&config.data_dir, keys.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let (audit, audit_rx) = hare::broker::audit::Audit::channel();
    let audit = if config.audit.is_some() { audit } else { hare::broker::audit::Audit::off() };
    let broker = match Broker::open(storage.clone(), &config.access, audit) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            tracing::error!("cannot recover from {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    storage.remove_orphan_logs(&broker.queue_log_ids());
    tracing::info!("data in {}, recovered in {:.3}s", config.data_dir.display(), started.elapsed().as_secs_f64());
    let audit_writer = match &config.audit {
        None => None,
        Some(settings) => match hare::audit::AuditWriter::spawn(audit_rx, settings.clone(), broker.clone()) {
            Ok(w) => {
                tracing::info!("audit log in {}", settings.path.display());
                Some(w)
            }
            Err(e) => {
                tracing::error!("cannot open the audit log {}: {e}", settings.path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let syncer = storage.syncer.clone();
    // MQTT's retained messages, when MQTT listens.
    let retained = match config.mqtt_listens().then(|| storage.open_retained()) {
        None => None,
        Some(Ok(r)) => Some(Arc::new(r)),
        Some(Err(e)) => {
            tracing::error!("cannot open MQTT's retained messages in {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let settle = broker.clone();
    let code = runtime.block_on(async move {
        if let Some(c) = &config.cluster {
            if let Err(e) = start_cluster(c, &config, &broker, keys.clone(), syncer.subscribe()).await {
                tracing::error!("cannot start the cluster node: {e}");
                return ExitCode::FAILURE;
            }
        }
        // Alarms, queue timers and statistics, for every listener; stopped when dropped.
        let background = hare::net::tasks::spawn(&broker, &config);
        let mut server = match Server::bind(
            config.clone(),
            broker.clone(),
            Some(syncer.subscribe()),
            background.alarm.clone(),
        )
        .await
        {
            Ok(s) => s.with_connection_limit(fds.connections),
            Err(e) => {
                tracing::error!("cannot listen on {}:{}: {e}", config.bind, config.port);
                return ExitCode::FAILURE;
            }
        };
        let tls = match &config.tls {
            None => None,
            Some(settings) => match hare::tls::Tls::load(settings.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!("cannot start TLS: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let mut amqps_port = None;
        if let Some(t) = &tls {
            server = match server.with_tls(config.tls_port, t.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen on {}:{} (AMQPS): {e}", config.bind, config.tls_port);
                    return ExitCode::FAILURE;
                }
            };
            amqps_port = server.tls_addr().map(|a| a.port());
            tracing::info!("AMQPS listening on {}:{}", config.bind, amqps_port.unwrap_or(config.tls_port));
            tokio::spawn(reload_on_hangup(t.clone()));
        }
        let amqp_port = match server.local_addr() {
            Ok(addr) => {
                tracing::info!("AMQP listening on {addr}");
                // Dynamic shovels: a worker for each shovel parameter, from now on.
                hare::shovel::spawn(broker.clone(), addr);
                addr.port()
            }
            Err(e) => {
                tracing::warn!("listening, but cannot read the local address: {e}");
                config.port
            }
        };
        // MQTT beside AMQP, over the same core, on the ports that are not 0.
        let (stop_mqtt, mqtt_stopped) = tokio::sync::watch::channel(false);
        let mut mqtt_task = None;
        let mut mqtt_listeners = Vec::new();
        if let Some(retained) = retained {
            let shared = hare::mqtt::Shared {
                broker: broker.clone(),
                config: Arc::new(config.clone()),
                durable: Some(syncer.subscribe()),
                alarm: background.alarm.clone(),
                retained,
                clients: Default::default(),
            };
            let mqtt = match hare::mqtt::Server::bind(shared, tls.clone(), fds.connections).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            for (protocol, name, a) in mqtt.addresses() {
                tracing::info!("{name} listening on {a}");
                mqtt_listeners.push((protocol, a.port()));
            }
            let mut stopped = mqtt_stopped.clone();
            mqtt_task = Some(tokio::spawn(mqtt.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })));
        }
        // RabbitMQ's stream protocol, on its ports that are not 0.
        let shared = hare::stream::Shared {
            broker: broker.clone(),
            config: Arc::new(config.clone()),
            durable: Some(syncer.subscribe()),
            alarm: background.alarm.clone(),
            sac: Default::default(),
        };
        let mut stream_task = None;
        match hare::stream::Server::bind(shared, tls.clone(), fds.connections).await {
            Ok(None) => {}
            Ok(Some(s)) => {
                for (protocol, name, a) in s.addresses() {
                    tracing::info!("{name} listening on {a}");
                    mqtt_listeners.push((protocol, a.port()));
                }
                let mut stopped = mqtt_stopped.clone();
                stream_task = Some(tokio::spawn(s.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })));
            }
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
        let http = match tokio::net::TcpListener::bind((config.bind.as_str(), config.management_port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot listen on {}:{} (management API): {e}", config.bind, config.management_port);
                return ExitCode::FAILURE;
            }
        };
        let http_port = http.local_addr().map_or(config.management_port, |a| a.port());
        tracing::info!("HTTP API listening on {}:{http_port}", config.bind);
        let mut https = None;
        if let Some(t) = &tls {
            let listener = match tokio::net::TcpListener::bind((config.bind.as_str(), config.management_tls_port)).await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot listen on {}:{} (HTTPS API): {e}", config.bind, config.management_tls_port);
                    return ExitCode::FAILURE;
                }
            };
            match hare::tls::TlsListener::spawn(listener, t.clone()) {
                Ok(l) => https = Some(l),
                Err(e) => {
                    tracing::error!("HTTPS API: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let https_port = https.as_ref().map(|l: &hare::tls::TlsListener| {
            use axum::serve::Listener;
            l.local_addr().map_or(config.management_tls_port, |a| a.port())
        });
        if let Some(p) = https_port {
            tracing::info!("HTTPS API listening on {}:{p}", config.bind);
        }
        let node = hare::http::NodeInfo {
            node: config.cluster.as_ref().map_or_else(|| "hare@localhost".into(), |c| c.node_name.clone()),
            amqp_port,
            http_port,
            amqps_port,
            https_port,
            bind: config.bind.clone(),
            memory_limit: config.memory_limit,
            disk_free_limit: config.disk_free_limit,
            data_dir: config.data_dir.clone(),
            started_at_ms: hare::broker::clock::now_ms(),
            config_file: args.config.clone(),
            external_auth: config.tls.as_ref().is_some_and(|t| t.ca.is_some()),
            other_listeners: mqtt_listeners,
        };
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(hare::http::serve(http, https, broker, node, Some(syncer.subscribe()), async {
            let _ = http_stopped.await;
        }));
        server.run(shutdown_signal()).await;
        let _ = stop_mqtt.send(true);
        for t in [mqtt_task, stream_task].into_iter().flatten() {
            let _ = t.await;
        }
        drop(mqtt_stopped);
        drop(background);
        let _ = stop_http.send(());
        if let Ok(Err(e)) = api.await {
            tracing::warn!("management API: {e}");
        }
        ExitCode::SUCCESS
    });
    if let Some(w) = audit_writer {
        w.stop();
    }
    // Everything appended reaches the disk before the process exits.
    storage.syncer.flush_now();
    settle.settle_delayed();
    storage.syncer.flush_now();
    storage.syncer.shutdown();
    tracing::info!("stopped");
    code
}

fn run_perf(args: hare::perf::PerfArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hare perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(hare::perf::run(args)) {
        Ok(summary) => {
            if json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("hare perf: {e}"),
                }
            } else {
                hare::perf::print_summary(&summary);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hare perf: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the TLS certificate, key and CA files again on SIGHUP: new handshakes use them,
/// open connections keep theirs.
async fn reload_on_hangup(tls: std::sync::Arc<hare::tls::Tls>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: TLS certificates will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::error!("TLS certificates not reloaded, the old ones stay in use: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Makes this broker a cluster node: the shared secret, Raft in data_dir/cluster, the bridge
/// between them (see `cluster`).
async fn start_cluster(
    c: &hare::config::ClusterConfig,
    config: &Config,
    broker: &Arc<Broker>,
    keys: Option<Arc<hare::storage::cipher::KeyRing>>,
    durable: tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    let secret = hare::cluster::secret::load_or_create(&c.secret_file)?;
    let bridge = hare::cluster::bridge::Bridge::new(broker.clone(), Some(durable), c.node_name.clone());
    let settings = hare::cluster::node::ClusterSettings {
        node_name: c.node_name.clone(),
        listen: format!("{}:{}", c.bind.as_deref().unwrap_or(&config.bind), c.port),
        advertise: format!("{}:{}", c.bind.as_deref().unwrap_or(&config.bind), c.port),
        seeds: c.seeds.clone(),
        secret,
        dir: config.data_dir.join("cluster"),
        heartbeat_ms: 100,
        election_min_ms: 500,
        election_max_ms: 1000,
        snapshot_every: c.snapshot_every,
        keys,
    };
    let source = settings.listen.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    // With a certificate, nodes speak mutual TLS to each other (under the secret's handshake).
    let tls = match &config.tls {
        Some(t) => {
            let configs = hare::tls::node_configs(t).map_err(|e| format!("cluster TLS: {e}"))?;
            tracing::info!("cluster: nodes speak TLS to each other");
            Some(configs)
        }
        None => None,
    };
    let host = Arc::new(hare::cluster::host::TcpHost::new(source, tls));
    let cluster = hare::cluster::node::Cluster::start(settings, bridge.clone(), host).await?;
    cluster.watch_reports();
    bridge.attach(cluster);
    Ok(())
}

/// The log filter: openraft's own informational lines (every vote and leader change, each
/// with its internal state) are left out unless the filter names openraft.
fn log_filter(filter: &str) -> String {
    if filter.contains("openraft") {
        filter.to_string()
    } else {
        format!("{filter},openraft=warn")
    }
}
