//! The query parameters RabbitMQ's list endpoints take, applied to a list of JSON objects:
//! `sort` (a field, dotted for nested ones such as `message_stats.publish_details.rate`) and
//! `sort_reverse`; `columns` (the fields to keep); and pagination: with `page`, the list is
//! filtered by `name` (a substring, or a regular expression with `use_regex=true`), cut into
//! pages of `page_size` (default 100, at most 500) and returned as RabbitMQ's page object
//! (`items`, `page`, `page_count`, `page_size`, `filtered_count`, `item_count`,
//! `total_count`). Bad values get RabbitMQ's 400. Objects of vhosts the caller may not see
//! (a `management` user without permissions there) are left out first.

use super::error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// The field at a dotted path.
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// RabbitMQ sorts numbers by value, strings by text, and puts missing values first.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keeps only the given fields (dotted paths keep the nested field, under its parents).
fn keep_columns(v: &Value, columns: &[&str]) -> Value {
    let mut out = Value::Object(Map::new());
    for c in columns {
        let Some(found) = field(v, c) else { continue };
        let parts: Vec<&str> = c.split('.').collect();
        put(&mut out, &parts, found.clone());
    }
    out
}

/// Sets the field at `path` in `into`, making the objects on the way.
fn put(into: &mut Value, path: &[&str], value: Value) {
    let Value::Object(map) = into else { return };
    match path {
        [] => {}
        [last] => {
            map.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            put(map.entry(first.to_string()).or_insert_with(|| Value::Object(Map::new())), rest, value)
        }
    }
}

fn bad_request(reason: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// The list as RabbitMQ answers it, given the request's query parameters.
pub fn respond(mut items: Vec<Value>, query: &HashMap<String, String>) -> Response {
    // A management user sees only the vhosts it has permissions in.
    items.retain(|v| v.get("vhost").and_then(Value::as_str).is_none_or(super::principal::current_may_see));
    let total = items.len();
    if let Some(sort) = query.get("sort").filter(|s| !s.is_empty()) {
        items.sort_by(|a, b| compare(field(a, sort), field(b, sort)));
    }
    if query.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let columns: Option<Vec<&str>> =
        query.get("columns").map(|c| c.split(',').map(str::trim).filter(|c| !c.is_empty()).collect());
    let shape = |items: Vec<Value>| -> Vec<Value> {
        match &columns {
            Some(cols) => items.iter().map(|v| keep_columns(v, cols)).collect(),
            None => items,
        }
    };
    let Some(page) = query.get("page") else {
        return Json(Value::Array(shape(items))).into_response();
    };
    let Ok(page) = page.parse::<usize>() else { return bad_request("page must be an integer") };
    let page_size = match query.get("page_size").map(|s| s.parse::<usize>()) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
        Some(_) => return bad_request(&format!("page_size must be between 1 and {MAX_PAGE_SIZE}")),
    };
    if page == 0 {
        return bad_request("page must be a positive integer");
    }
    if let Some(name) = query.get("name").filter(|n| !n.is_empty()) {
        let name_of = |v: &Value| v.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if query.get("use_regex").is_some_and(|v| v == "true") {
            // The pattern comes from the client: bound its compiled size.
            let Ok(re) = regex::RegexBuilder::new(name).size_limit(1 << 20).build() else {
                return bad_request("invalid regular expression");
            };
            items.retain(|v| re.is_match(&name_of(v)));
        } else {
            let needle = name.to_lowercase();
            items.retain(|v| name_of(v).to_lowercase().contains(&needle));
        }
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size).max(1);
    if page > page_count {
        return bad_request("Page out of range");
    }
    let chosen: Vec<Value> = items.into_iter().skip((page - 1) * page_size).take(page_size).collect();
    Json(json!({
        "filtered_count": filtered,
        "item_count": chosen.len(),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
        "items": shape(chosen),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    async fn body(r: Response) -> (StatusCode, Value) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("a body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    fn items() -> Vec<Value> {
        (0..250).map(|i| json!({ "name": format!("q-{i:03}"), "messages": (i * 7) % 50, "x": { "r": i } })).collect()
    }

    #[tokio::test]
    async fn pages_sorting_and_columns() {
        let (s, v) = body(respond(items(), &q(&[("page", "3"), ("page_size", "100")]))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["item_count"], 50);
        assert_eq!(v["items"][0]["name"], "q-200");
        let (_, v) =
            body(respond(items(), &q(&[("sort", "x.r"), ("sort_reverse", "true"), ("columns", "name,x.r")]))).await;
        assert_eq!(v[0], json!({ "name": "q-249", "x": { "r": 249 } }));
        let (_, v) = body(respond(items(), &q(&[("page", "1"), ("name", "q-1[0-1]"), ("use_regex", "true")]))).await;
        assert_eq!(v["filtered_count"], 20);
        assert_eq!(v["total_count"], 250);
        let (s, v) = body(respond(items(), &q(&[("page", "9")]))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["reason"], "Page out of range");
        let (s, _) = body(respond(items(), &q(&[("page", "1"), ("page_size", "501")]))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
}
