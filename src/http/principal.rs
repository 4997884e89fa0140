//! Who an API request acts as, and what RabbitMQ's management tags let it see and call:
//! `management` (and `policymaker`) may use the API and sees only the vhosts it has
//! permissions in; `monitoring` sees every vhost, connection and node; `administrator` may do
//! everything. A user without one of these tags cannot use the API (401 "Not management
//! user"). The request's principal is a task-local for the handlers and lists below it.

use super::{error, Api};
use crate::auth::UserDef;
use crate::broker::audit::Actor;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use std::collections::HashSet;

/// The user a request acts as, and what its tags let it see.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub tags: Vec<String>,
    /// The vhosts it may see; None: all of them (administrator, monitoring).
    pub vhosts: Option<HashSet<String>>,
    /// The client's address, for the audit log.
    pub source: Option<String>,
}

impl Principal {
    pub fn of(api: &Api, user: &UserDef) -> Principal {
        let sees_all = user.has_tag("administrator") || user.has_tag("monitoring");
        let vhosts = (!sees_all).then(|| {
            api.broker.access().permissions().filter(|p| p.user == user.name).map(|p| p.vhost.clone()).collect()
        });
        Principal { name: user.name.clone(), tags: user.tags.clone(), vhosts, source: None }
    }

    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn may_see(&self, vhost: &str) -> bool {
        self.vhosts.as_ref().is_none_or(|v| v.contains(vhost))
    }
}

tokio::task_local! {
    /// The principal of the request being served: lists keep only what it may see.
    pub static PRINCIPAL: Principal;
}

/// Who the current request acts as, for the audit log (the broker outside a request).
pub fn actor() -> Actor {
    PRINCIPAL.try_with(|p| Actor::http(&p.name, p.source.clone())).unwrap_or_else(|_| Actor::broker())
}

/// Whether the current request may see objects of `vhost` (true outside a request).
pub fn current_may_see(vhost: &str) -> bool {
    PRINCIPAL.try_with(|p| p.may_see(vhost)).unwrap_or(true)
}

fn not_authorised(reason: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, "not_authorised", reason)
}

/// The vhost a path names, for the paths that name one (`/api/queues/{vhost}/...`).
fn path_vhost(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next() != Some("api") {
        return None;
    }
    let kind = parts.next()?;
    // /api/parameters/{component}/{vhost}, /api/shovels/{vhost}, /api/shovels/vhost/{vhost}
    if kind == "parameters" {
        parts.next()?;
    }
    if kind == "shovels" {
        let first = parts.next().filter(|s| !s.is_empty())?;
        let raw = if first == "vhost" { parts.next().filter(|s| !s.is_empty())? } else { first };
        return Some(percent_decode(raw));
    }
    let scoped = [
        "queues",
        "exchanges",
        "bindings",
        "vhosts",
        "consumers",
        "aliveness-test",
        "permissions",
        "topic-permissions",
        "vhost-limits",
        "policies",
        "operator-policies",
        "parameters",
    ];
    if !scoped.contains(&kind) {
        return None;
    }
    let raw = parts.next().filter(|s| !s.is_empty())?;
    Some(percent_decode(raw))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let (h, l) = (bytes[i + 1], bytes[i + 2]);
            if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(h) * 16 + hex(l));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RabbitMQ's authorisation of an API request by the caller's tags, or its 401.
pub fn authorise(p: &Principal, method: &Method, path: &str) -> Result<(), Response> {
    if !["administrator", "monitoring", "policymaker", "management"].iter().any(|t| p.has(t)) {
        return Err(not_authorised("Not management user"));
    }
    if p.has("administrator") {
        return Ok(());
    }
    let admin_only = [
        "/api/users",
        "/api/permissions",
        "/api/topic-permissions",
        "/api/user-limits",
        "/api/definitions",
        "/api/all-configuration",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
        || (path.starts_with("/api/vhosts/")
            && (path.ends_with("/permissions") || path.ends_with("/topic-permissions")))
        || (path.starts_with("/api/vhosts/") && *method != Method::GET && path.matches('/').count() == 3)
        || (path.starts_with("/api/vhost-limits") && *method != Method::GET)
        || (path.starts_with("/api/hare/cluster/") && *method != Method::GET);
    // A policy itself (not the lists) only to a policymaker; operator policies only to an
    // administrator (as RabbitMQ's is_authorized_policies and is_authorized_admin).
    let one_policy = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.contains('/'));
    if admin_only || one_policy("/api/operator-policies/") {
        return Err(not_authorised("Not administrator user"));
    }
    let changes_parameter =
        *method != Method::GET && (path.starts_with("/api/parameters/") || path.starts_with("/api/shovels/vhost/"));
    if (one_policy("/api/policies/") || changes_parameter) && !p.has("policymaker") {
        return Err(not_authorised("User not authorised to access object"));
    }
    if (path.starts_with("/api/nodes") || path.starts_with("/api/hare/cluster")) && !p.has("monitoring") {
        return Err(not_authorised("Not monitor user"));
    }
    // Another user's connections only to a monitor.
    if let Some(user) = path.strip_prefix("/api/connections/username/") {
        if percent_decode(user) != p.name && !p.has("monitoring") {
            return Err(not_authorised("Not monitor user"));
        }
    }
    if let Some(v) = path_vhost(path) {
        if !p.may_see(&v) {
            return Err(not_authorised("Access refused."));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_vhost_url_encoded() {
        assert_eq!(path_vhost("/api/queues/%2F/q").as_deref(), Some("/"));
        assert_eq!(path_vhost("/api/exchanges/my%20vh").as_deref(), Some("my vh"));
        assert_eq!(path_vhost("/api/queues"), None);
        assert_eq!(path_vhost("/api/overview"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
