//! A policy's fields checked as RabbitMQ's `rabbit_policy:validate` checks them, with its
//! texts: the management API answers them whole.

use super::{PolicyDef, PolicyKind};
use serde_json::Value;

/// A term as Erlang's `~p` prints a decoded JSON value: strings as binaries, objects as maps.
pub fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(items) => format!("[{}]", items.iter().map(erlang_term).collect::<Vec<_>>().join(",")),
        Value::Object(m) => {
            let fields: Vec<String> = m.iter().map(|(k, v)| format!("<<\"{k}\">> => {}", erlang_term(v))).collect();
            format!("#{{{}}}", fields.join(","))
        }
        other => other.to_string(),
    }
}

/// A policy's fields as a request gives them; `priority` and `apply-to` may be absent
/// (0 and `all`).
pub struct PolicyRequest<'a> {
    pub pattern: &'a Value,
    pub definition: &'a serde_json::Map<String, Value>,
    pub priority: Option<&'a Value>,
    pub apply_to: Option<&'a Value>,
}

/// Checks a policy as RabbitMQ's `rabbit_policy:validate` does and builds it; the error is
/// RabbitMQ's whole text (`Validation failed`, then each problem on its own line, in its
/// order: the definition, `apply-to`, the pattern, the priority).
pub fn validate(kind: PolicyKind, vhost: &str, name: &str, r: &PolicyRequest) -> Result<PolicyDef, String> {
    let priority = r.priority.cloned().unwrap_or_else(|| Value::from(0));
    let apply_to = r.apply_to.cloned().unwrap_or_else(|| Value::from("all"));
    let mut errors = Vec::new();
    if let Err(e) = validate_definition(kind, r.definition) {
        errors.push(e);
    }
    match &apply_to {
        Value::String(s) if matches!(s.as_str(), "all" | "exchanges" | "queues") => {}
        other => errors.push(format!(
            "apply-to '{}' unrecognised; should be 'queues', 'exchanges' or 'all'",
            other.as_str().map_or_else(|| other.to_string(), str::to_string)
        )),
    }
    match r.pattern {
        Value::String(p) => {
            if let Err(e) = fancy_regex::Regex::new(p) {
                let prefix = "pattern should be regular expression but is invalid: ";
                errors.push(format!("{prefix}{}", pcre_error(p, &e, prefix.len())));
            }
        }
        other => errors.push(format!("pattern should be a binary but was {}", erlang_term(other))),
    }
    if !priority.is_number() {
        errors.push(format!("priority should be a number, actually was {}", erlang_term(&priority)));
    }
    if !errors.is_empty() {
        return Err(crate::broker::parameters::validation_failed(errors));
    }
    Ok(PolicyDef {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern: r.pattern.as_str().unwrap_or_default().to_string(),
        apply_to: apply_to.as_str().unwrap_or("all").to_string(),
        definition: r.definition.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        priority: priority.as_number().cloned().unwrap_or_else(|| 0.into()),
    })
}

/// PCRE's `{Message, Offset}` for the common mistakes (what Erlang's `re` reports), printed
/// as Erlang's `~p` prints it from column `column`; others carry the Rust engine's message.
fn pcre_error(pattern: &str, e: &fancy_regex::Error, column: usize) -> String {
    let (message, offset) = pcre_reason(pattern, e);
    tuple(&format!("\"{message}\""), &offset.to_string(), column)
}

/// A two-element tuple as `~p` prints it: on one line if it fits in 80 columns, else one
/// element per line, aligned after the brace.
fn tuple(a: &str, b: &str, column: usize) -> String {
    let one = format!("{{{a},{b}}}");
    if column + one.len() <= 80 {
        return one;
    }
    format!("{{{a},\n{}{b}}}", " ".repeat(column + 1))
}

fn pcre_reason(pattern: &str, e: &fancy_regex::Error) -> (String, usize) {
    let mut depth: i64 = 0;
    let mut class = false;
    let mut escaped = false;
    for (i, c) in pattern.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !class => class = true,
            ']' if class => class = false,
            '(' if !class => depth += 1,
            ')' if !class => {
                depth -= 1;
                if depth < 0 {
                    return ("unmatched parentheses".into(), i);
                }
            }
            _ => {}
        }
    }
    if class {
        return ("missing terminating ] for character class".into(), pattern.len());
    }
    if depth > 0 {
        return ("missing )".into(), pattern.len());
    }
    if pattern.starts_with(['*', '+', '?']) {
        return ("nothing to repeat".into(), 0);
    }
    (e.to_string().replace('"', "'").lines().next().unwrap_or_default().to_string(), 0)
}

/// The keys each kind of policy takes.
fn known(kind: PolicyKind, key: &str) -> bool {
    const OPERATOR: [&str; 7] = [
        "expires",
        "message-ttl",
        "max-length",
        "max-length-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "delivery-limit",
    ];
    match kind {
        PolicyKind::OperatorPolicy => OPERATOR.contains(&key),
        PolicyKind::Policy => {
            OPERATOR.contains(&key)
                || MIRRORING.contains(&key)
                || matches!(
                    key,
                    "alternate-exchange"
                        | "dead-letter-exchange"
                        | "dead-letter-routing-key"
                        | "dead-letter-strategy"
                        | "queue-mode"
                        | "queue-version"
                        | "overflow"
                        | "max-age"
                        | "stream-max-segment-size-bytes"
                        | "queue-leader-locator"
                        | "initial-cluster-size"
                        | "queue-master-locator"
                )
        }
    }
}

/// Classic mirroring's keys: taken and validated so that RabbitMQ's definitions import, with
/// no effect (Hare replicates with quorum queues; see docs/compatibility.md).
const MIRRORING: [&str; 6] =
    ["ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown", "ha-promote-on-failure"];

/// The largest segment size a stream takes (RabbitMQ's `?MAX_STREAM_MAX_SEGMENT_SIZE`).
const MAX_SEGMENT_SIZE: u64 = 3_000_000_000;

fn validate_definition(kind: PolicyKind, def: &serde_json::Map<String, Value>) -> Result<(), String> {
    if def.is_empty() {
        return Err("no policy provided".into());
    }
    // As RabbitMQ: the keys in order, the first wrong value is the error; then keys no
    // validator knows.
    let mut keys: Vec<&String> = def.keys().collect();
    keys.sort();
    let mirroring: Vec<(&String, &Value)> =
        keys.iter().filter(|k| MIRRORING.contains(&k.as_str())).map(|k| (*k, &def[*k])).collect();
    for key in &keys {
        let key = key.as_str();
        if !known(kind, key) || MIRRORING.contains(&key) {
            continue;
        }
        validate_value(key, &def[key])?;
    }
    if kind == PolicyKind::Policy && !mirroring.is_empty() {
        validate_mirroring(&mirroring)?;
    }
    let unknown: Vec<String> = keys
        .iter()
        .filter(|k| !known(kind, k))
        .map(|k| format!("{{<<\"{k}\">>,{}}}", erlang_term(&def[k.as_str()])))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("[{}] are not recognised policy settings", unknown.join(",")));
    }
    Ok(())
}

fn validate_value(key: &str, v: &Value) -> Result<(), String> {
    let t = erlang_term(v);
    let int_at_least = |min: i64| v.as_i64().is_some_and(|n| n >= min) || (min <= 0 && v.as_u64().is_some());
    let ok = match key {
        "alternate-exchange" | "dead-letter-exchange" | "dead-letter-routing-key" => v.is_string(),
        "dead-letter-strategy" => matches!(v.as_str(), Some("at-most-once" | "at-least-once")),
        "message-ttl"
        | "max-length"
        | "max-length-bytes"
        | "max-in-memory-length"
        | "max-in-memory-bytes"
        | "delivery-limit"
        | "initial-cluster-size" => int_at_least(0),
        "expires" => int_at_least(1),
        "queue-mode" => matches!(v.as_str(), Some("default" | "lazy")),
        "queue-version" => matches!(v.as_i64(), Some(1 | 2)),
        "overflow" => matches!(v.as_str(), Some("drop-head" | "reject-publish" | "reject-publish-dlx")),
        "max-age" => v.as_str().is_some_and(valid_max_age),
        "queue-leader-locator" => {
            matches!(v.as_str(), Some("client-local" | "balanced" | "random" | "least-leaders"))
        }
        "queue-master-locator" => matches!(v.as_str(), Some("min-masters" | "client-local" | "random")),
        "stream-max-segment-size-bytes" => v.as_u64().is_some_and(|n| n <= MAX_SEGMENT_SIZE),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match key {
        "alternate-exchange" => format!("{t} is not a valid alternate exchange name"),
        "dead-letter-exchange" => format!("{t} is not a valid dead letter exchange name"),
        "dead-letter-routing-key" => format!("{t} is not a valid dead letter routing key"),
        "dead-letter-strategy" => format!("{t} is not a valid dead letter strategy"),
        "message-ttl" => format!("{t} is not a valid message TTL"),
        "expires" => format!("{t} is not a valid queue expiry"),
        "max-length" => format!("{t} is not a valid maximum length"),
        "max-length-bytes" => format!("{t} is not a valid maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => format!("{t} is not a valid maximum memory in bytes"),
        "queue-mode" => format!("{t} is not a valid queue-mode value"),
        "queue-version" => format!("{t} is not a valid queue-version value"),
        "overflow" => format!("{t} is not a valid overflow value"),
        "delivery-limit" => format!("{t} is not a valid delivery limit"),
        "max-age" => format!("{t} is not a valid max age"),
        "queue-leader-locator" => format!("{t} is not a valid queue leader locator value"),
        "initial-cluster-size" => format!("{t} is not a valid cluster size"),
        "stream-max-segment-size-bytes" => format!("{t} is not a valid segment size"),
        "queue-master-locator" => format!("{t} is not a valid master locator"),
        _ => format!("{t} is not valid"),
    })
}

/// A stream's `max-age`: a number and a unit (`Y`, `M`, `D`, `h`, `m`, `s`), as RabbitMQ's
/// `check_max_age`.
fn valid_max_age(s: &str) -> bool {
    let Some(unit) = s.chars().last() else { return false };
    let digits = &s[..s.len() - unit.len_utf8()];
    matches!(unit, 'Y' | 'M' | 'D' | 'h' | 'm' | 's')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Classic mirroring's rules (`rabbit_mirror_queue_misc:validate_policy`), in its order.
fn validate_mirroring(keys: &[(&String, &Value)]) -> Result<(), String> {
    let get = |k: &str| keys.iter().find(|(key, _)| key.as_str() == k).map(|(_, v)| *v);
    let Some(mode) = get("ha-mode") else {
        return Err("ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown".into());
    };
    let params = get("ha-params");
    let none = || "none".to_string();
    match mode.as_str() {
        Some("all") => {
            if params.is_some() {
                return Err("ha-mode=\"all\" does not take parameters".into());
            }
        }
        Some("exactly") => {
            if !params.is_some_and(|p| p.as_i64().is_some_and(|n| n > 0)) {
                let given = params.map_or_else(none, erlang_term);
                return Err(format!("ha-mode=\"exactly\" takes an integer, {given} given"));
            }
        }
        Some("nodes") => match params {
            Some(Value::Array(items)) if items.is_empty() => {
                return Err("ha-mode=\"nodes\" list must be non-empty".into());
            }
            Some(Value::Array(items)) => {
                let bad: Vec<String> = items.iter().filter(|i| !i.is_string()).map(erlang_term).collect();
                if !bad.is_empty() {
                    return Err(format!(
                        "ha-mode=\"nodes\" takes a list of strings, [{}] was not a string",
                        bad.join(",")
                    ));
                }
            }
            other => {
                let given = other.map_or_else(none, erlang_term);
                return Err(format!("ha-mode=\"nodes\" takes a list, {given} given"));
            }
        },
        _ => return Err(format!("{} is not a valid ha-mode value", erlang_term(mode))),
    }
    if let Some(m) = get("ha-sync-mode") {
        if !matches!(m.as_str(), Some("automatic" | "manual")) {
            return Err(format!("ha-sync-mode must be \"manual\" or \"automatic\", got {}", erlang_term(m)));
        }
    }
    if let Some(n) = get("ha-sync-batch-size") {
        if !n.as_i64().is_some_and(|n| n > 0) {
            return Err(format!("ha-sync-batch-size takes an integer greater than 0, {} given", erlang_term(n)));
        }
    }
    if let Some(p) = get("ha-promote-on-shutdown") {
        if !matches!(p.as_str(), Some("when-synced" | "always")) {
            return Err(format!(
                "ha-promote-on-shutdown must be \"always\" or \"when-synced\", got {}",
                erlang_term(p)
            ));
        }
    }
    if let Some(p) = get("ha-promote-on-failure") {
        if !matches!(p.as_str(), Some("when-synced" | "always")) {
            return Err(format!("ha-promote-on-failure must be \"always\" or \"when-synced\", got {}", erlang_term(p)));
        }
    }
    Ok(())
}
