//! The HTTP side of `hare ctl`: requests with basic auth, and the API's errors turned into
//! messages a person can act on.

use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the management API at {url}: {reason} (is the broker running, with --management-port?)")]
    Unreachable { url: String, reason: String },
    #[error("access refused for user '{user}' ({status}): check --user and --password")]
    Refused { user: String, status: u16 },
    #[error("{status} {error}: {reason}")]
    Api { status: u16, error: String, reason: String },
    #[error("the broker answered {status} with a body that is not JSON")]
    BadBody { status: u16 },
    #[error("{path}: {err}")]
    File { path: String, err: std::io::Error },
    #[error("{0}")]
    Usage(String),
}

/// A path segment, percent-encoded (vhost `/` is `%2F`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub struct Api {
    base: String,
    user: String,
    auth: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(url: &str, user: &str, password: &str) -> Api {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Api {
            base: url.trim_end_matches('/').to_string(),
            user: user.to_string(),
            auth: format!("Basic {token}"),
            agent: ureq::AgentBuilder::new().timeout(TIMEOUT).build(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>, reason: Option<&str>) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url).set("Authorization", &self.auth);
        if let Some(r) = reason {
            req = req.set("X-Reason", r);
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        let (status, text) = match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(ureq::Error::Transport(t)) => {
                return Err(CtlError::Unreachable { url: self.base.clone(), reason: t.to_string() })
            }
        };
        if status == 401 || status == 403 && text.contains("not_authorised") {
            return Err(CtlError::Refused { user: self.user.clone(), status });
        }
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| CtlError::BadBody { status })?
        };
        if status >= 400 {
            let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(CtlError::Api { status, error: field("error"), reason: field("reason") });
        }
        Ok(value)
    }

    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send("GET", path, None, None)
    }
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send("PUT", path, Some(body), None)
    }
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send("POST", path, Some(body), None)
    }
    pub fn delete(&self, path: &str) -> Result<Value, CtlError> {
        self.send("DELETE", path, None, None)
    }
    pub fn delete_with_reason(&self, path: &str, reason: &str) -> Result<Value, CtlError> {
        self.send("DELETE", path, None, Some(reason))
    }
}
