//! `hare ctl`: a command-line client of the management HTTP API, in the spirit of
//! rabbitmqadmin. It speaks only HTTP to a running broker (Hare, or RabbitMQ with its
//! management plugin), so it works wherever the API is reachable.
//!
//! ```text
//! hare ctl list queues                      # a table; --format json for JSON
//! hare ctl declare queue orders --durable
//! hare ctl publish --routing-key orders --payload hello
//! hare ctl get orders --count 5
//! hare ctl export defs.json                 # definitions, in RabbitMQ's format
//! hare ctl add-vhost shop
//! hare ctl add-user app s3cret --tags management
//! hare ctl -V shop set-permissions app '^app\.' '^app\.' '^app\.'
//! hare ctl cluster status                   # on a cluster node: members, leader, lag
//! ```

mod client;
mod migrate;
mod table;

use clap::{Args, Subcommand, ValueEnum};
use client::{Api, CtlError};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The management API's base URL.
    #[arg(long, env = "HARE_CTL_URL", default_value = "http://127.0.0.1:15672")]
    pub url: String,
    #[arg(long, short, env = "HARE_CTL_USER", default_value = "guest")]
    pub user: String,
    #[arg(long, short, env = "HARE_CTL_PASSWORD", default_value = "guest")]
    pub password: String,
    /// The vhost that commands act on.
    #[arg(long, short = 'V', default_value = "/")]
    pub vhost: String,
    /// Output: a table for people, JSON for programs.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Vhosts,
    Users,
    Permissions,
    Nodes,
    Policies,
    OperatorPolicies,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// The broker's overview: versions, totals, message rates.
    Overview,
    /// Lists objects (of every vhost; queues, exchanges, bindings and consumers of --vhost).
    List {
        #[arg(value_enum)]
        kind: Kind,
    },
    /// Declares a queue, an exchange or a binding.
    Declare {
        #[command(subcommand)]
        what: Declare,
    },
    /// Deletes a queue, an exchange or a binding.
    Delete {
        #[command(subcommand)]
        what: Delete,
    },
    /// Removes every ready message from a queue.
    Purge {
        queue: String,
    },
    /// Publishes one message through an exchange (the default exchange unless given).
    Publish {
        #[arg(long, default_value = "")]
        exchange: String,
        #[arg(long, default_value = "")]
        routing_key: String,
        #[arg(long)]
        payload: String,
        /// Message properties as a JSON object (delivery_mode, headers, ...).
        #[arg(long, default_value = "{}")]
        properties: String,
    },
    /// Takes messages from a queue.
    Get {
        queue: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false.
        #[arg(long, default_value = "ack_requeue_true")]
        ackmode: String,
    },
    /// Writes the broker's definitions (RabbitMQ's JSON format) to a file, or `-` for stdout.
    Export {
        file: String,
    },
    /// Loads definitions from a file written by `export` or by RabbitMQ.
    Import {
        file: String,
    },
    /// Adds a user (or replaces one), as rabbitmqctl add_user; tags separated by commas.
    AddUser {
        name: String,
        password: String,
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Sets a user's password, keeping its tags.
    ChangePassword {
        name: String,
        password: String,
    },
    /// Sets a user's tags (comma-separated; empty for none), keeping its password.
    SetUserTags {
        name: String,
        tags: String,
    },
    DeleteUser {
        name: String,
    },
    AddVhost {
        name: String,
    },
    /// Deletes a vhost with everything in it; its connections are closed.
    DeleteVhost {
        name: String,
    },
    /// Sets the user's configure, write and read expressions in --vhost.
    SetPermissions {
        user: String,
        configure: String,
        write: String,
        read: String,
    },
    ClearPermissions {
        user: String,
    },
    /// Sets a vhost (--vhost) or user limit: max-connections, max-queues, max-channels.
    SetLimit {
        name: String,
        value: i64,
        /// A user's limit instead of the vhost's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Sets a policy in --vhost, as rabbitmqctl set_policy: NAME PATTERN DEFINITION (a JSON
    /// object, e.g. '{"max-length": 1000}').
    SetPolicy {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    ClearPolicy {
        name: String,
    },
    /// Sets an operator policy (limits that cap what policies allow; administrators only).
    SetOperatorPolicy {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    ClearOperatorPolicy {
        name: String,
    },
    /// Moves a running RabbitMQ here: its definitions (users keep their passwords), then every
    /// queue's messages through on-confirm shovels, with progress and a report. Rerun after
    /// an interruption, it goes on where it stopped.
    Migrate {
        /// RabbitMQ's management API, with its credentials: http://user:pass@host:15672
        #[arg(long)]
        from: String,
        /// RabbitMQ's AMQP listener, with its credentials: amqp://user:pass@host:5672
        #[arg(long)]
        from_amqp: String,
    },
    /// A cluster node's cluster: its members, leader and replication lag; joining; forgetting.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Closes a connection (by its name, as `list connections` shows it).
    CloseConnection {
        name: String,
        #[arg(long, default_value = "Closed via hare ctl")]
        reason: String,
    },
}

/// A policy's fields, as rabbitmqctl set_policy takes them.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    name: String,
    /// A regular expression matched against queue and exchange names.
    pattern: String,
    /// The settings, a JSON object.
    definition: String,
    #[arg(long, default_value_t = 0)]
    priority: i64,
    /// queues, exchanges or all.
    #[arg(long, default_value = "all")]
    apply_to: String,
}

impl PolicyArgs {
    fn body(&self) -> Result<Value, CtlError> {
        Ok(json!({
            "pattern": self.pattern,
            "definition": json_arg("the definition", &self.definition)?,
            "priority": self.priority,
            "apply-to": self.apply_to,
        }))
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Members (reachable, voter, how far behind the leader's log), the leader, the quorum
    /// queues.
    Status,
    /// Asks the cluster that SEED (a member's host:cluster-port) belongs to to take in the
    /// node this command talks to (--url).
    Join { seed: String },
    /// Takes the node NAME out of the cluster (it may be down).
    Forget { node: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum Declare {
    Queue {
        name: String,
        #[arg(long)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// x- arguments as a JSON object, e.g. '{"x-max-length": 1000}'.
        #[arg(long, default_value = "{}")]
        arguments: String,
    },
    Exchange {
        name: String,
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        #[arg(long, default_value = "{}")]
        arguments: String,
    },
    Binding {
        #[command(flatten)]
        ends: BindingEnds,
        #[arg(long, default_value = "")]
        routing_key: String,
        #[arg(long, default_value = "{}")]
        arguments: String,
    },
}

/// What a binding joins.
#[derive(Debug, Clone, Args)]
pub struct BindingEnds {
    #[arg(long)]
    source: String,
    #[arg(long)]
    destination: String,
    /// queue or exchange.
    #[arg(long, default_value = "queue")]
    destination_type: String,
}

impl BindingEnds {
    /// The binding's path: `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
    fn path(&self, vhost: &str) -> Result<String, CtlError> {
        let kind = destination_kind(&self.destination_type)?;
        let e = client::encode;
        Ok(format!("/api/bindings/{}/e/{}/{kind}/{}", e(vhost), e(&self.source), e(&self.destination)))
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Delete {
    Queue {
        name: String,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it holds no messages.
        #[arg(long)]
        if_empty: bool,
    },
    Exchange {
        name: String,
        #[arg(long)]
        if_unused: bool,
    },
    Binding {
        #[command(flatten)]
        ends: BindingEnds,
        /// The binding's properties_key, as `list bindings` shows it (`~` for an empty key).
        #[arg(long, default_value = "~")]
        properties_key: String,
    },
}

/// Runs a `hare ctl` command; errors are printed and give exit code 1 (2 when the broker
/// cannot be reached).
pub fn run(args: CtlArgs) -> ExitCode {
    let api = Api::new(&args.url, &args.user, &args.password);
    match execute(&api, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hare ctl: {e}");
            ExitCode::from(if matches!(e, CtlError::Unreachable { .. }) { 2 } else { 1 })
        }
    }
}

fn json_arg(what: &str, text: &str) -> Result<Value, CtlError> {
    serde_json::from_str(text).map_err(|e| CtlError::Usage(format!("{what} is not JSON: {e}")))
}

/// The columns a table shows for each kind (JSON output has every field).
fn columns(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Queues => &["vhost", "name", "type", "durable", "messages_ready", "messages_unacknowledged", "consumers"],
        Kind::Exchanges => &["vhost", "name", "type", "durable", "auto_delete", "internal"],
        Kind::Bindings => &["vhost", "source", "destination", "destination_type", "routing_key", "properties_key"],
        Kind::Connections => &["name", "user", "vhost", "channels", "state"],
        Kind::Channels => {
            &["name", "user", "vhost", "consumer_count", "messages_unacknowledged", "prefetch_count", "confirm"]
        }
        Kind::Consumers => &["queue.name", "consumer_tag", "channel_details.name", "ack_required", "prefetch_count"],
        Kind::Vhosts => &["name", "messages"],
        Kind::Users => &["name", "tags"],
        Kind::Permissions => &["user", "vhost", "configure", "write", "read"],
        Kind::Nodes => &["name", "type", "running", "mem_used", "fd_used", "fd_total", "uptime"],
        Kind::Policies | Kind::OperatorPolicies => &["vhost", "name", "pattern", "apply-to", "definition", "priority"],
    }
}

fn list_path(kind: Kind, vhost: &str) -> String {
    let v = client::encode(vhost);
    match kind {
        Kind::Queues => format!("/api/queues/{v}"),
        Kind::Exchanges => format!("/api/exchanges/{v}"),
        Kind::Bindings => format!("/api/bindings/{v}"),
        Kind::Consumers => format!("/api/consumers/{v}"),
        Kind::Connections => "/api/connections".into(),
        Kind::Channels => "/api/channels".into(),
        Kind::Vhosts => "/api/vhosts".into(),
        Kind::Users => "/api/users".into(),
        Kind::Permissions => "/api/permissions".into(),
        Kind::Nodes => "/api/nodes".into(),
        Kind::Policies => format!("/api/policies/{v}"),
        Kind::OperatorPolicies => format!("/api/operator-policies/{v}"),
    }
}

fn print(args: &CtlArgs, value: &Value, cols: &[&str]) {
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Table => print!("{}", table::render(value, cols)),
    }
}

fn done(args: &CtlArgs, what: String) {
    match args.format {
        Format::Json => println!("{}", json!({ "ok": what })),
        Format::Table => println!("{what}"),
    }
}

fn execute(api: &Api, args: &CtlArgs) -> Result<(), CtlError> {
    let v = client::encode(&args.vhost);
    let e = client::encode;
    match &args.command {
        CtlCommand::Overview => {
            let o = api.get("/api/overview")?;
            let cols = [
                "product_name",
                "rabbitmq_version",
                "node",
                "object_totals.connections",
                "object_totals.channels",
                "object_totals.queues",
                "object_totals.consumers",
                "queue_totals.messages",
                "message_stats.publish_details.rate",
                "message_stats.deliver_get_details.rate",
            ];
            print(args, &o, &cols);
        }
        CtlCommand::List { kind } => print(args, &api.get(&list_path(*kind, &args.vhost))?, columns(*kind)),
        CtlCommand::Cluster { what: ClusterCommand::Status } => {
            let s = api.get("/api/hare/cluster")?;
            match args.format {
                Format::Json => print(args, &s, &[]),
                Format::Table => {
                    let text = |k: &str| s.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
                    println!("node: {}", text("node").unwrap_or_default());
                    println!("leader: {}", text("leader").filter(|l| l != "null").unwrap_or_else(|| "none".into()));
                    println!(
                        "term: {}, log: {}, applied: {}",
                        text("term").unwrap_or_default(),
                        text("last_log_index").unwrap_or_default(),
                        text("applied_index").unwrap_or_default()
                    );
                    let members = s.get("members").cloned().unwrap_or(Value::Array(vec![]));
                    print!(
                        "{}",
                        table::render(&members, &["name", "address", "voter", "reachable", "matched_index", "lag"])
                    );
                    // As rabbitmqctl cluster_status lists them: each resource alarm and its node.
                    let alarms: Vec<String> = members
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|m| {
                            let node = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                            let resources = m.get("alarms").and_then(Value::as_array).cloned().unwrap_or_default();
                            resources
                                .into_iter()
                                .map(move |r| format!("{} alarm on node {node}", r.as_str().unwrap_or("")))
                        })
                        .collect();
                    if alarms.is_empty() {
                        println!("alarms: none");
                    }
                    for a in alarms {
                        println!("alarm: {a}");
                    }
                    let queues = s.get("quorum_queues").and_then(Value::as_array).cloned().unwrap_or_default();
                    println!("quorum queues: {}", queues.len());
                }
            }
        }
        CtlCommand::Cluster { what: ClusterCommand::Join { seed } } => {
            api.post("/api/hare/cluster/join", &json!({ "seed": seed }))?;
            done(args, format!("joined the cluster of {seed}"));
        }
        CtlCommand::Cluster { what: ClusterCommand::Forget { node } } => {
            api.post("/api/hare/cluster/forget", &json!({ "node": node }))?;
            done(args, format!("node {node} is no longer a member"));
        }
        CtlCommand::Declare { what } => match what {
            Declare::Queue { name, durable, auto_delete, arguments } => {
                let body = json!({ "durable": durable, "auto_delete": auto_delete, "arguments": json_arg("--arguments", arguments)? });
                api.put(&format!("/api/queues/{v}/{}", e(name)), &body)?;
                done(args, format!("queue {name} declared"));
            }
            Declare::Exchange { name, kind, durable, auto_delete, internal, arguments } => {
                let body = json!({
                    "type": kind, "durable": durable, "auto_delete": auto_delete, "internal": internal,
                    "arguments": json_arg("--arguments", arguments)?,
                });
                api.put(&format!("/api/exchanges/{v}/{}", e(name)), &body)?;
                done(args, format!("exchange {name} declared"));
            }
            Declare::Binding { ends, routing_key, arguments } => {
                let body = json!({ "routing_key": routing_key, "arguments": json_arg("--arguments", arguments)? });
                api.post(&ends.path(&args.vhost)?, &body)?;
                done(args, format!("binding {} -> {} declared", ends.source, ends.destination));
            }
        },
        CtlCommand::Delete { what } => match what {
            Delete::Queue { name, if_unused, if_empty } => {
                let mut q = Vec::new();
                if *if_unused {
                    q.push("if-unused=true");
                }
                if *if_empty {
                    q.push("if-empty=true");
                }
                let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
                api.delete(&format!("/api/queues/{v}/{}{query}", e(name)))?;
                done(args, format!("queue {name} deleted"));
            }
            Delete::Exchange { name, if_unused } => {
                let query = if *if_unused { "?if-unused=true" } else { "" };
                api.delete(&format!("/api/exchanges/{v}/{}{query}", e(name)))?;
                done(args, format!("exchange {name} deleted"));
            }
            Delete::Binding { ends, properties_key } => {
                api.delete(&format!("{}/{}", ends.path(&args.vhost)?, e(properties_key)))?;
                done(args, format!("binding {} -> {} deleted", ends.source, ends.destination));
            }
        },
        CtlCommand::Purge { queue } => {
            api.delete(&format!("/api/queues/{v}/{}/contents", e(queue)))?;
            done(args, format!("queue {queue} purged"));
        }
        CtlCommand::Publish { exchange, routing_key, payload, properties } => {
            let x = if exchange.is_empty() { "amq.default" } else { exchange };
            let body = json!({
                "routing_key": routing_key,
                "payload": payload,
                "payload_encoding": "string",
                "properties": json_arg("--properties", properties)?,
            });
            let r = api.post(&format!("/api/exchanges/{v}/{}/publish", e(x)), &body)?;
            let routed = r.get("routed").and_then(Value::as_bool).unwrap_or(false);
            match args.format {
                Format::Json => println!("{r}"),
                Format::Table => {
                    println!("{}", if routed { "message published" } else { "message published but NOT routed" })
                }
            }
        }
        CtlCommand::Get { queue, count, ackmode } => {
            let body = json!({ "count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50_000 });
            let got = api.post(&format!("/api/queues/{v}/{}/get", e(queue)), &body)?;
            print(args, &got, &["routing_key", "exchange", "message_count", "redelivered", "payload"]);
        }
        CtlCommand::Export { file } => {
            let defs = api.get("/api/definitions")?;
            let text = serde_json::to_string_pretty(&defs).unwrap_or_default();
            if file == "-" {
                println!("{text}");
            } else {
                std::fs::write(file, text + "\n").map_err(|err| CtlError::File { path: file.clone(), err })?;
                done(args, format!("definitions written to {file}"));
            }
        }
        CtlCommand::Import { file } => {
            let text = std::fs::read_to_string(file).map_err(|err| CtlError::File { path: file.clone(), err })?;
            let defs = json_arg(file, &text)?;
            api.post("/api/definitions", &defs)?;
            done(args, format!("definitions imported from {file}"));
        }
        CtlCommand::CloseConnection { name, reason } => {
            api.delete_with_reason(&format!("/api/connections/{}", e(name)), reason)?;
            done(args, format!("connection {name} closed"));
        }
        CtlCommand::AddUser { name, password, tags } => {
            api.put(&format!("/api/users/{}", e(name)), &json!({ "password": password, "tags": tags }))?;
            done(args, format!("user {name} added"));
        }
        CtlCommand::ChangePassword { name, password } => {
            let user = api.get(&format!("/api/users/{}", e(name)))?;
            let tags = user.get("tags").cloned().unwrap_or(json!([]));
            api.put(&format!("/api/users/{}", e(name)), &json!({ "password": password, "tags": tags }))?;
            done(args, format!("password of {name} changed"));
        }
        CtlCommand::SetUserTags { name, tags } => {
            api.get(&format!("/api/users/{}", e(name)))?;
            api.put(&format!("/api/users/{}", e(name)), &json!({ "tags": tags }))?;
            done(args, format!("tags of {name} set"));
        }
        CtlCommand::DeleteUser { name } => {
            api.delete(&format!("/api/users/{}", e(name)))?;
            done(args, format!("user {name} deleted"));
        }
        CtlCommand::SetPolicy { policy } | CtlCommand::SetOperatorPolicy { policy } => {
            let kind =
                if matches!(args.command, CtlCommand::SetPolicy { .. }) { "policies" } else { "operator-policies" };
            api.put(&format!("/api/{kind}/{v}/{}", e(&policy.name)), &policy.body()?)?;
            done(args, format!("policy {} set", policy.name));
        }
        CtlCommand::ClearPolicy { name } | CtlCommand::ClearOperatorPolicy { name } => {
            let kind =
                if matches!(args.command, CtlCommand::ClearPolicy { .. }) { "policies" } else { "operator-policies" };
            api.delete(&format!("/api/{kind}/{v}/{}", e(name)))?;
            done(args, format!("policy {name} cleared"));
        }
        CtlCommand::Migrate { from, from_amqp } => {
            migrate::run(api, from, from_amqp, args.format == Format::Json)?;
        }
        CtlCommand::AddVhost { name } => {
            api.put(&format!("/api/vhosts/{}", e(name)), &json!({}))?;
            done(args, format!("vhost {name} added"));
        }
        CtlCommand::DeleteVhost { name } => {
            api.delete(&format!("/api/vhosts/{}", e(name)))?;
            done(args, format!("vhost {name} deleted"));
        }
        CtlCommand::SetPermissions { user, configure, write, read } => {
            let body = json!({ "configure": configure, "write": write, "read": read });
            api.put(&format!("/api/permissions/{v}/{}", e(user)), &body)?;
            done(args, format!("permissions of {user} in {} set", args.vhost));
        }
        CtlCommand::ClearPermissions { user } => {
            api.delete(&format!("/api/permissions/{v}/{}", e(user)))?;
            done(args, format!("permissions of {user} in {} cleared", args.vhost));
        }
        CtlCommand::SetLimit { name, value, user } => {
            let path = match user {
                Some(u) => format!("/api/user-limits/{}/{}", e(u), e(name)),
                None => format!("/api/vhost-limits/{v}/{}", e(name)),
            };
            api.put(&path, &json!({ "value": value }))?;
            done(args, format!("{name} set to {value}"));
        }
    }
    Ok(())
}

fn destination_kind(t: &str) -> Result<&'static str, CtlError> {
    match t {
        "queue" | "q" => Ok("q"),
        "exchange" | "e" => Ok("e"),
        other => Err(CtlError::Usage(format!("--destination-type must be queue or exchange, not {other}"))),
    }
}
