//! Plain-text tables for `hare ctl`: one row per object, the chosen columns (dotted paths
//! reach into nested objects), widths fitted to the contents.

use serde_json::Value;

fn cell(v: &Value, path: &str) -> String {
    match path.split('.').try_fold(v, |v, k| v.get(k)) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string)).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// A table of `value` (a list of objects, or one object) with `columns`.
pub fn render(value: &Value, columns: &[&str]) -> String {
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    if rows.is_empty() {
        return "(none)\n".into();
    }
    let cells: Vec<Vec<String>> = rows.iter().map(|r| columns.iter().map(|c| cell(r, c)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain(std::iter::once(c.len())).max().unwrap_or(0))
        .collect();
    let line = |items: Vec<&str>| -> String {
        let padded: Vec<String> = items.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}", w = *w)).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(columns.to_vec());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for r in &cells {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_fit_their_widest_cell() {
        let v = json!([{ "name": "a", "x": { "n": 12345 } }, { "name": "longer-name", "tags": ["t1", "t2"] }]);
        let t = render(&v, &["name", "x.n", "tags"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "name         x.n    tags");
        assert_eq!(lines[2], "a            12345");
        assert_eq!(lines[3], "longer-name         t1,t2");
    }
}
