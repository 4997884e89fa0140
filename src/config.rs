//! Server settings from flags, environment variables (HARE_*) and an optional TOML file.
//! Flags and environment win over the file, which wins over the defaults.

use serde::Deserialize;
use std::path::PathBuf;

/// The broker's settings on the command line (see `crate::cli` for the whole of it).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on for AMQP.
    #[arg(long, env = "HARE_BIND")]
    pub bind: Option<String>,
    /// AMQP port (0 picks a free one and logs it).
    #[arg(long, env = "HARE_PORT")]
    pub port: Option<u16>,
    /// Port of the management HTTP API, on the same address (0 picks a free one and logs it).
    #[arg(long, env = "HARE_MANAGEMENT_PORT")]
    pub management_port: Option<u16>,
    /// Directory for durable data.
    #[arg(long, env = "HARE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. info, debug, hare=trace.
    #[arg(long, env = "HARE_LOG")]
    pub log: Option<String>,
    /// Heartbeat interval in seconds the server proposes (0 disables).
    #[arg(long, env = "HARE_HEARTBEAT")]
    pub heartbeat: Option<u16>,
    /// Memory use above which publishers are blocked: a share of RAM ("40%") or a size ("2GiB").
    #[arg(long, env = "HARE_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Free disk space below which publishers are blocked, as RabbitMQ's disk_free_limit
    /// ("50MB", "2GiB", bytes).
    #[arg(long, env = "HARE_DISK_FREE_LIMIT")]
    pub disk_free_limit: Option<String>,
    /// How often message rates are sampled, in milliseconds (RabbitMQ's
    /// collect_statistics_interval; 5000 by default).
    #[arg(long, env = "HARE_STATS_INTERVAL")]
    pub stats_interval: Option<u64>,
    /// The user a fresh data directory starts with (RabbitMQ's default_user; "guest").
    /// Empty: none, so no one can log in until a user is added.
    #[arg(long, env = "HARE_DEFAULT_USER")]
    pub default_user: Option<String>,
    /// That user's password ("guest").
    #[arg(long, env = "HARE_DEFAULT_PASS")]
    pub default_pass: Option<String>,
    /// PEM certificate chain for TLS: with it (and --tls-key) the broker also listens for
    /// AMQPS (--tls-port) and serves the API over HTTPS (--management-tls-port).
    #[arg(long, env = "HARE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "HARE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates to verify client certificates against (asks clients for one).
    #[arg(long, env = "HARE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: refuse clients without a certificate (RabbitMQ's fail_if_no_peer_cert).
    #[arg(long, env = "HARE_TLS_FAIL_IF_NO_PEER_CERT")]
    pub tls_fail_if_no_peer_cert: bool,
    /// AMQPS port (5671; 0 picks a free one).
    #[arg(long, env = "HARE_TLS_PORT")]
    pub tls_port: Option<u16>,
    /// HTTPS port of the management API (15671; 0 picks a free one).
    #[arg(long, env = "HARE_MANAGEMENT_TLS_PORT")]
    pub management_tls_port: Option<u16>,
    /// MQTT port (1883; 0 for no MQTT listener).
    #[arg(long, env = "HARE_MQTT_PORT")]
    pub mqtt_port: Option<u16>,
    /// MQTT over TLS port, when a certificate is configured (8883; 0 for none).
    #[arg(long, env = "HARE_MQTT_TLS_PORT")]
    pub mqtt_tls_port: Option<u16>,
    /// MQTT over WebSocket port, at the path /ws (RabbitMQ's Web MQTT; 15675; 0 for none).
    #[arg(long, env = "HARE_MQTT_WS_PORT")]
    pub mqtt_ws_port: Option<u16>,
    /// MQTT over secure WebSocket port, when a certificate is configured (15676; 0 for none).
    #[arg(long, env = "HARE_MQTT_WSS_PORT")]
    pub mqtt_wss_port: Option<u16>,
    /// RabbitMQ's stream protocol port (5552; 0 for none).
    #[arg(long, env = "HARE_STREAM_PORT")]
    pub stream_port: Option<u16>,
    /// The stream protocol over TLS, when a certificate is configured (5551; 0 for none).
    #[arg(long, env = "HARE_STREAM_TLS_PORT")]
    pub stream_tls_port: Option<u16>,
    /// File with the 256-bit key (64 hex digits, or 32 bytes) that seals message records
    /// and definitions on disk with AES-256-GCM (encryption at rest).
    #[arg(long, env = "HARE_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// The audit log (JSON lines; data_dir/audit.log by default; "off" for none).
    #[arg(long, env = "HARE_AUDIT_LOG")]
    pub audit_log: Option<String>,
    /// This node's name in a cluster (the same name on every start; "hare-<cluster port>" by
    /// default).
    #[arg(long, env = "HARE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Port other cluster nodes reach this one on: with it, the broker is a cluster node.
    #[arg(long, env = "HARE_CLUSTER_PORT")]
    pub cluster_port: Option<u16>,
    /// The cluster's nodes as host:port (their cluster ports), this one included, comma
    /// separated: a cluster's first start forms it from all of them.
    #[arg(long, env = "HARE_CLUSTER_SEEDS", value_delimiter = ',')]
    pub cluster_seeds: Option<Vec<String>>,
    /// The address the cluster port listens on, and other nodes are reached from (--bind by
    /// default).
    #[arg(long, env = "HARE_CLUSTER_BIND")]
    pub cluster_bind: Option<String>,
    /// The secret nodes of the cluster share (~/.hare.cluster-secret by default, made with
    /// random content by the first node that starts).
    #[arg(long, env = "HARE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Log entries between a node's snapshots of the replicated state (20000): the log is
    /// purged behind a snapshot, and a node behind that far catches up from it.
    #[arg(long, env = "HARE_CLUSTER_SNAPSHOT_EVERY")]
    pub cluster_snapshot_every: Option<u64>,
    /// TOML file with any of: bind, port, management_port, data_dir, log, heartbeat, memory_limit,
    /// disk_free_limit, stats_interval, frame_max, channel_max, max_message_size,
    /// consumer_max_per_channel, max_unacked_per_channel (65536), max_unacked_bytes_per_channel
    /// ("128MiB"), max_pending_connections_per_source (256), tcp_sndbuf (each AMQP socket's
    /// send buffer, RabbitMQ's tcp_listen_options.sndbuf; "512KiB", 0: the kernel's), default_user,
    /// default_pass, loopback_users (users who may log in only from loopback; ["guest"]),
    /// tls_cert, tls_key, tls_ca, tls_fail_if_no_peer_cert, tls_port, management_tls_port, mqtt_port, mqtt_tls_port,
    /// mqtt_ws_port, mqtt_wss_port, stream_port, stream_tls_port,
    /// encryption_key_file, encryption_previous_key_files (old keys, read only: key rotation),
    /// audit_log, audit_log_max_bytes (rotation size; "10MB"), audit_log_files (rotated files kept; 5),
    /// node_name, cluster_port, cluster_bind, cluster_seeds (a list), cluster_secret_file,
    /// cluster_snapshot_every.
    #[arg(long, short, env = "HARE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    port: Option<u16>,
    management_port: Option<u16>,
    data_dir: Option<PathBuf>,
    log: Option<String>,
    heartbeat: Option<u16>,
    memory_limit: Option<String>,
    disk_free_limit: Option<String>,
    stats_interval: Option<u64>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    max_message_size: Option<u64>,
    consumer_max_per_channel: Option<u32>,
    max_unacked_per_channel: Option<u32>,
    max_unacked_bytes_per_channel: Option<String>,
    max_pending_connections_per_source: Option<u32>,
    tcp_sndbuf: Option<String>,
    default_user: Option<String>,
    default_pass: Option<String>,
    loopback_users: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_fail_if_no_peer_cert: Option<bool>,
    tls_port: Option<u16>,
    management_tls_port: Option<u16>,
    mqtt_port: Option<u16>,
    mqtt_tls_port: Option<u16>,
    mqtt_ws_port: Option<u16>,
    mqtt_wss_port: Option<u16>,
    stream_port: Option<u16>,
    stream_tls_port: Option<u16>,
    encryption_key_file: Option<PathBuf>,
    encryption_previous_key_files: Option<Vec<PathBuf>>,
    audit_log: Option<String>,
    audit_log_max_bytes: Option<String>,
    audit_log_files: Option<u32>,
    node_name: Option<String>,
    cluster_port: Option<u16>,
    cluster_bind: Option<String>,
    cluster_seeds: Option<Vec<String>>,
    cluster_secret_file: Option<PathBuf>,
    cluster_snapshot_every: Option<u64>,
}

/// A cluster node's settings (see `cluster::node`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_name: String,
    pub port: u16,
    /// The address the cluster port listens on and connections to peers leave from.
    pub bind: Option<String>,
    pub seeds: Vec<String>,
    pub secret_file: PathBuf,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: String,
    pub port: u16,
    pub management_port: u16,
    pub data_dir: PathBuf,
    pub log: String,
    pub heartbeat: u16,
    /// Bytes of resident memory above which publishers are blocked.
    pub memory_limit: u64,
    /// Bytes of free disk space (where the data directory is) below which publishers are blocked.
    pub disk_free_limit: u64,
    /// Milliseconds between samples of the message statistics (rates, latency windows).
    pub stats_interval_ms: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub max_message_size: u64,
    /// Consumers one channel may have (RabbitMQ's consumer_max_per_channel), so that one
    /// client cannot grow a channel's consumer table without bound.
    pub consumer_max_per_channel: u32,
    /// Deliveries one channel may hold unacknowledged, whatever its prefetch: past either
    /// bound its consumers wait for acks and basic.get is refused (406), so a consumer with
    /// prefetch 0 that never acknowledges cannot pull a whole queue, paged out or not, into
    /// memory.
    pub unacked_limits: crate::broker::consumer::UnackedLimits,
    /// Connections from one IP address that have not logged in yet, beyond which more from
    /// it are closed at once (see `net::pending`).
    pub max_pending_per_source: u32,
    /// SO_SNDBUF asked for on each AMQP socket (RabbitMQ's `tcp_listen_options.sndbuf`; Linux
    /// doubles it, and caps it at `net.core.wmem_max`); 0 leaves the buffer to the kernel's
    /// autotuning (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    ///
    /// 512 KiB by default: on loopback a send buffer of at most about 1 MiB cost the broker
    /// 14-20 % less CPU per large message than the autotuned 4 MiB (likely because its pages
    /// are used again while still in the CPU's cache), and it bounds the kernel memory a slow
    /// consumer's socket holds. The price is on links with a long round trip: a connection has at most
    /// the buffer in flight, about 1 MiB per round trip (100 MB/s at 10 ms). Consumers far
    /// away want 0 (or a larger value).
    pub tcp_sndbuf: u32,
    /// The default user of a fresh data directory, and who may log in only from loopback.
    pub access: crate::broker::AccessSettings,
    /// TLS, when a certificate and key are configured.
    pub tls: Option<crate::tls::TlsSettings>,
    pub tls_port: u16,
    pub management_tls_port: u16,
    /// MQTT's ports; 0 for none.
    pub mqtt_port: u16,
    pub mqtt_tls_port: u16,
    pub mqtt_ws_port: u16,
    pub mqtt_wss_port: u16,
    /// The stream protocol's ports; 0 for none.
    pub stream_port: u16,
    pub stream_tls_port: u16,
    /// Encryption at rest: the current key's file, and previous keys' files (read only).
    pub encryption_key_file: Option<PathBuf>,
    pub encryption_previous_key_files: Vec<PathBuf>,
    /// The audit log and its rotation; `None`: no audit log.
    pub audit: Option<crate::audit::AuditSettings>,
    /// Cluster membership; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 5672,
            management_port: 15672,
            data_dir: PathBuf::from("data"),
            log: "info".into(),
            heartbeat: 60,
            memory_limit: total_memory().map_or(1 << 30, |t| t / 10 * 4),
            // RabbitMQ's default.
            disk_free_limit: 50_000_000,
            stats_interval_ms: crate::broker::stats::SAMPLE_INTERVAL_MS,
            frame_max: 131072,
            channel_max: 2047,
            max_message_size: 128 * 1024 * 1024,
            consumer_max_per_channel: 65_536,
            unacked_limits: crate::broker::consumer::UnackedLimits { count: 65_536, bytes: 128 * 1024 * 1024 },
            // With the 10 s handshake timeout: a source may open at most ~25 sockets a
            // second that never log in. Clients that log in leave the count at once.
            max_pending_per_source: 256,
            tcp_sndbuf: 512 * 1024,
            access: crate::broker::AccessSettings::default(),
            tls: None,
            tls_port: 5671,
            management_tls_port: 15671,
            mqtt_port: 1883,
            mqtt_tls_port: 8883,
            mqtt_ws_port: 15675,
            mqtt_wss_port: 15676,
            stream_port: 5552,
            stream_tls_port: 5551,
            encryption_key_file: None,
            encryption_previous_key_files: Vec::new(),
            audit: Some(crate::audit::AuditSettings {
                path: PathBuf::from("data").join("audit.log"),
                max_bytes: DEFAULT_AUDIT_LOG_BYTES,
                files: DEFAULT_AUDIT_LOG_FILES,
            }),
            cluster: None,
        }
    }
}

/// The audit log is rotated past this size...
const DEFAULT_AUDIT_LOG_BYTES: u64 = 10_000_000;
/// ...and this many rotated files are kept: at most ~60 MB of audit log by default.
const DEFAULT_AUDIT_LOG_FILES: u32 = 5;

/// Log entries between a cluster node's snapshots, unless set: a snapshot holds every quorum
/// queue's messages, so taking one costs what they weigh, and the log behind it is kept
/// until then.
const DEFAULT_SNAPSHOT_EVERY: u64 = 20_000;
/// Fewer would snapshot nearly every batch.
const MIN_SNAPSHOT_EVERY: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("frame_max must be at least 4096, got {0}")]
    FrameMax(u32),
    #[error("memory_limit: {0}")]
    MemoryLimit(String),
    #[error("disk_free_limit: {0}")]
    DiskFreeLimit(String),
    #[error("tls_cert and tls_key go together: set both or neither")]
    TlsHalf,
    #[error("audit_log_max_bytes: {0}")]
    AuditLogSize(String),
    #[error("max_unacked_bytes_per_channel: {0}")]
    UnackedBytes(String),
    #[error("tcp_sndbuf: expected a size up to 1 GiB (\"512KiB\", or 0 for the kernel's autotuning), got {0:?}")]
    TcpSndbuf(String),
    #[error("encryption_previous_key_files needs encryption_key_file: old keys only read, the current key writes")]
    PreviousKeysAlone,
    #[error("cluster_snapshot_every must be at least 20, got {0}")]
    SnapshotEvery(u64),
}

impl Config {
    /// Some MQTT port is open: plain, or over TLS with a certificate configured.
    pub fn mqtt_listens(&self) -> bool {
        let tls = self.tls.is_some();
        self.mqtt_port != 0 || self.mqtt_ws_port != 0 || (tls && (self.mqtt_tls_port != 0 || self.mqtt_wss_port != 0))
    }

    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let c = Config {
            bind: args.bind.clone().or(file.bind).unwrap_or(d.bind),
            port: args.port.or(file.port).unwrap_or(d.port),
            management_port: args.management_port.or(file.management_port).unwrap_or(d.management_port),
            data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or(d.data_dir),
            log: args.log.clone().or(file.log).unwrap_or(d.log),
            heartbeat: args.heartbeat.or(file.heartbeat).unwrap_or(d.heartbeat),
            memory_limit: match args.memory_limit.clone().or(file.memory_limit) {
                Some(s) => parse_memory_limit(&s).map_err(ConfigError::MemoryLimit)?,
                None => d.memory_limit,
            },
            disk_free_limit: match args.disk_free_limit.clone().or(file.disk_free_limit) {
                Some(s) => parse_size(&s).map_err(ConfigError::DiskFreeLimit)?,
                None => d.disk_free_limit,
            },
            stats_interval_ms: args.stats_interval.or(file.stats_interval).unwrap_or(d.stats_interval_ms).max(100),
            frame_max: file.frame_max.unwrap_or(d.frame_max),
            channel_max: file.channel_max.unwrap_or(d.channel_max),
            max_message_size: file.max_message_size.unwrap_or(d.max_message_size),
            consumer_max_per_channel: file.consumer_max_per_channel.unwrap_or(d.consumer_max_per_channel),
            unacked_limits: crate::broker::consumer::UnackedLimits {
                count: file.max_unacked_per_channel.unwrap_or(d.unacked_limits.count).max(1),
                bytes: match file.max_unacked_bytes_per_channel {
                    Some(s) => parse_size(&s).map_err(ConfigError::UnackedBytes)?.max(1),
                    None => d.unacked_limits.bytes,
                },
            },
            max_pending_per_source: file.max_pending_connections_per_source.unwrap_or(d.max_pending_per_source).max(1),
            tcp_sndbuf: match file.tcp_sndbuf {
                Some(s) => parse_size(&s).ok().filter(|&n| n <= 1 << 30).ok_or(ConfigError::TcpSndbuf(s))? as u32,
                None => d.tcp_sndbuf,
            },
            access: {
                let user = args.default_user.clone().or(file.default_user).unwrap_or_else(|| "guest".into());
                let pass = args.default_pass.clone().or(file.default_pass).unwrap_or_else(|| "guest".into());
                crate::broker::AccessSettings {
                    default_user: (!user.is_empty()).then_some((user, pass)),
                    loopback_users: file.loopback_users.unwrap_or(d.access.loopback_users),
                }
            },
            tls: None,
            tls_port: d.tls_port,
            management_tls_port: d.management_tls_port,
            mqtt_port: d.mqtt_port,
            mqtt_tls_port: d.mqtt_tls_port,
            mqtt_ws_port: d.mqtt_ws_port,
            mqtt_wss_port: d.mqtt_wss_port,
            stream_port: d.stream_port,
            stream_tls_port: d.stream_tls_port,
            encryption_key_file: None,
            encryption_previous_key_files: Vec::new(),
            audit: None,
            cluster: None,
        };
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let snapshot_every = match args.cluster_snapshot_every.or(file.cluster_snapshot_every) {
            None => DEFAULT_SNAPSHOT_EVERY,
            Some(n) if n >= MIN_SNAPSHOT_EVERY => n,
            Some(n) => return Err(ConfigError::SnapshotEvery(n)),
        };
        let c = Config {
            tls: match (cert, key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsSettings {
                    cert,
                    key,
                    ca: args.tls_ca.clone().or(file.tls_ca),
                    fail_if_no_peer_cert: args.tls_fail_if_no_peer_cert
                        || file.tls_fail_if_no_peer_cert.unwrap_or(false),
                }),
                (None, None) => None,
                _ => return Err(ConfigError::TlsHalf),
            },
            tls_port: args.tls_port.or(file.tls_port).unwrap_or(d.tls_port),
            management_tls_port: args.management_tls_port.or(file.management_tls_port).unwrap_or(d.management_tls_port),
            mqtt_port: args.mqtt_port.or(file.mqtt_port).unwrap_or(d.mqtt_port),
            mqtt_tls_port: args.mqtt_tls_port.or(file.mqtt_tls_port).unwrap_or(d.mqtt_tls_port),
            mqtt_ws_port: args.mqtt_ws_port.or(file.mqtt_ws_port).unwrap_or(d.mqtt_ws_port),
            mqtt_wss_port: args.mqtt_wss_port.or(file.mqtt_wss_port).unwrap_or(d.mqtt_wss_port),
            stream_port: args.stream_port.or(file.stream_port).unwrap_or(d.stream_port),
            stream_tls_port: args.stream_tls_port.or(file.stream_tls_port).unwrap_or(d.stream_tls_port),
            encryption_key_file: args.encryption_key_file.clone().or(file.encryption_key_file),
            encryption_previous_key_files: file.encryption_previous_key_files.unwrap_or_default(),
            audit: match args.audit_log.clone().or(file.audit_log).as_deref() {
                Some("off") | Some("") => None,
                path => Some(crate::audit::AuditSettings {
                    path: path.map_or_else(|| c.data_dir.join("audit.log"), PathBuf::from),
                    max_bytes: match file.audit_log_max_bytes {
                        Some(s) => parse_size(&s).map_err(ConfigError::AuditLogSize)?,
                        None => DEFAULT_AUDIT_LOG_BYTES,
                    },
                    files: file.audit_log_files.unwrap_or(DEFAULT_AUDIT_LOG_FILES),
                }),
            },
            cluster: args.cluster_port.or(file.cluster_port).map(|port| ClusterConfig {
                node_name: args.node_name.clone().or(file.node_name).unwrap_or_else(|| format!("hare-{port}")),
                port,
                bind: args.cluster_bind.clone().or(file.cluster_bind),
                seeds: args.cluster_seeds.clone().or(file.cluster_seeds).unwrap_or_default(),
                secret_file: args
                    .cluster_secret_file
                    .clone()
                    .or(file.cluster_secret_file)
                    .unwrap_or_else(crate::cluster::secret::default_path),
                snapshot_every,
            }),
            ..c
        };
        if c.encryption_key_file.is_none() && !c.encryption_previous_key_files.is_empty() {
            return Err(ConfigError::PreviousKeysAlone);
        }
        if c.frame_max < 4096 {
            return Err(ConfigError::FrameMax(c.frame_max));
        }
        Ok(c)
    }
}

/// Total memory of the machine, in bytes.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses a memory limit: a percentage of RAM ("40%") or a size ("512MiB", "2GB", "1000000").
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| format!("bad percentage '{s}'"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("percentage out of range: '{s}'"));
        }
        let total = total_memory().ok_or("cannot read the machine's total memory")?;
        return Ok((total as f64 * p / 100.0) as u64);
    }
    parse_size(s)
}

/// Parses a size in bytes: "512MiB", "2GB", "1000000".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n: u64 = num.trim().parse().map_err(|_| format!("bad memory size '{s}'"))?;
    n.checked_mul(mult).ok_or_else(|| format!("memory size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse() {
        assert_eq!(parse_memory_limit("1000"), Ok(1000));
        assert_eq!(parse_memory_limit("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_limit("2GB"), Ok(2_000_000_000));
        assert!(parse_memory_limit("40%").unwrap() > 0);
        assert!(parse_memory_limit("abc").is_err());
        assert!(parse_memory_limit("140%").is_err());
    }

    fn cluster_args(extra: &[&str]) -> Args {
        use clap::Parser;
        let argv = ["hare", "--cluster-port", "25672"].iter().chain(extra);
        crate::cli::Cli::parse_from(argv).server
    }

    #[test]
    fn a_cluster_snapshots_every_20000_entries_unless_told_and_not_below_20() {
        let snapshot_every =
            |extra: &[&str]| Config::load(&cluster_args(extra)).map(|c| c.cluster.unwrap().snapshot_every);
        assert_eq!(snapshot_every(&[]).unwrap(), 20_000);
        assert_eq!(snapshot_every(&["--cluster-snapshot-every", "20"]).unwrap(), 20);
        let e = snapshot_every(&["--cluster-snapshot-every", "5"]).unwrap_err();
        assert_eq!(e.to_string(), "cluster_snapshot_every must be at least 20, got 5");
    }
}
