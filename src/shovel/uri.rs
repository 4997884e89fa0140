//! AMQP URIs as RabbitMQ's shovel takes them (RabbitMQ's URI spec, `amqp_uri`, whose error
//! terms the reasons follow):
//! `amqp[s]://[user[:password]@]host[:port][/vhost][?query]`, each part percent-decoded. A URI
//! without a host (`amqp://`, `amqp:///vhost`) names this broker, as in RabbitMQ.

use std::time::Duration;

/// Where one end of a shovel connects.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpUri {
    /// None: this broker (its own listener, as the user who set the shovel up).
    pub host: Option<String>,
    pub port: u16,
    pub tls: bool,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub heartbeat: Option<u16>,
    /// TLS query keys: `cacertfile`, `certfile`, `keyfile`, `verify`, `server_name_indication`.
    pub cacertfile: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub verify: bool,
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
}

impl AmqpUri {
    /// The URI as shown in a shovel's status, its password hidden.
    pub fn redacted(raw: &str) -> String {
        match (raw.find("://"), raw.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let cred = &raw[s + 3..at];
                match cred.find(':') {
                    Some(c) => format!("{}{}:[redacted]{}", &raw[..s + 3], &cred[..c], &raw[at..]),
                    None => raw.to_string(),
                }
            }
            _ => raw.to_string(),
        }
    }
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad_percent_encoding")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad_percent_encoding")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "bad_percent_encoding".to_string())
}

/// Parses a URI; the error is a short reason (RabbitMQ's `amqp_uri` words where it has them).
pub fn parse(raw: &str) -> Result<AmqpUri, String> {
    let (scheme, rest) = raw.split_once("://").ok_or("malformed_uri")?;
    let tls = match scheme {
        "amqp" => false,
        "amqps" => true,
        other => return Err(format!("{{unexpected_uri_scheme,\"{other}\"}}")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (decode(a)?, decode(b)?),
            None => (decode(u)?, String::new()),
        },
        None => ("guest".into(), "guest".into()),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        // [ipv6]:port
        let (h, after) = h.split_once(']').ok_or("bad_host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| "bad_port")?),
            None if after.is_empty() => None,
            None => return Err("bad_host".into()),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h)?, Some(p.parse::<u16>().map_err(|_| "bad_port")?)),
            None => (decode(hostport)?, None),
        }
    };
    let vhost = match path {
        None => "/".to_string(),
        Some(p) => decode(p)?,
    };
    let mut uri = AmqpUri {
        host: (!host.is_empty()).then_some(host),
        port: port.unwrap_or(if tls { 5671 } else { 5672 }),
        tls,
        user,
        password,
        vhost,
        heartbeat: None,
        cacertfile: None,
        certfile: None,
        keyfile: None,
        verify: false,
        server_name: None,
        connect_timeout: Duration::from_secs(30),
    };
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "heartbeat" => uri.heartbeat = Some(v.parse().map_err(|_| format!("bad_heartbeat {v}"))?),
            "connection_timeout" => {
                uri.connect_timeout = Duration::from_millis(v.parse().map_err(|_| format!("bad_timeout {v}"))?)
            }
            "cacertfile" => uri.cacertfile = Some(v),
            "certfile" => uri.certfile = Some(v),
            "keyfile" => uri.keyfile = Some(v),
            "verify" => uri.verify = v == "verify_peer",
            "server_name_indication" => uri.server_name = Some(v),
            // Others RabbitMQ takes (channel_max, frame_max, auth_mechanism, ...) are accepted
            // and left at their defaults.
            _ => {}
        }
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_as_rabbitmqs_spec_reads_them() {
        let u = parse("amqp://").unwrap();
        assert_eq!((u.host, u.vhost.as_str()), (None, "/"));
        let u = parse("amqp:///shop").unwrap();
        assert_eq!((u.host, u.vhost.as_str()), (None, "shop"));
        let u = parse("amqp://app:s%40cret@rabbit.example:5673/%2F?heartbeat=10").unwrap();
        assert_eq!(u.host.as_deref(), Some("rabbit.example"));
        assert_eq!((u.port, u.user.as_str(), u.password.as_str(), u.vhost.as_str()), (5673, "app", "s@cret", "/"));
        assert_eq!(u.heartbeat, Some(10));
        let u = parse("amqps://h?cacertfile=/ca.pem&verify=verify_peer").unwrap();
        assert!(u.tls && u.verify && u.port == 5671);
        assert_eq!(u.cacertfile.as_deref(), Some("/ca.pem"));
        let u = parse("amqp://[::1]:5000").unwrap();
        assert_eq!((u.host.as_deref(), u.port, u.user.as_str()), (Some("::1"), 5000, "guest"));
        assert!(parse("http://h").is_err());
        assert!(parse("amqp://h:notaport").is_err());
        assert!(parse("nothing").is_err());
        assert_eq!(AmqpUri::redacted("amqp://u:p@h/v"), "amqp://u:[redacted]@h/v");
        assert_eq!(AmqpUri::redacted("amqp://"), "amqp://");
    }
}
