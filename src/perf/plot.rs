//! An SVG chart of a perf run: rates on top, latency percentiles below.

use super::{Sample, Summary};
use std::fmt::Write;

const W: f64 = 800.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;

fn panel(
    out: &mut String,
    y0: f64,
    title: &str,
    unit: &str,
    samples: &[Sample],
    series: &[(&str, &str, fn(&Sample) -> Option<f64>)],
) {
    let tmax = samples.last().map_or(1.0, |s| s.second).max(1.0);
    let vmax =
        samples.iter().flat_map(|s| series.iter().filter_map(move |(_, _, f)| f(s))).fold(0.0f64, f64::max).max(1e-9);
    let (x, y) = (|t: f64| LEFT + t / tmax * (W - LEFT - 20.0), |v: f64| y0 + PANEL - v / vmax * PANEL);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="14">{title}</text>"#, y0 - 8.0);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
        W - LEFT - 20.0
    );
    for i in 0..=4 {
        let v = vmax * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{} {unit}</text>"#,
            LEFT - 4.0,
            y(v) + 3.0,
            if vmax >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
        );
    }
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> =
            samples.iter().filter_map(|s| f(s).map(|v| format!("{:.1},{:.1}", x(s.second), y(v)))).collect();
        let _ =
            writeln!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" fill="{color}">{name}</text>"#,
            LEFT + 10.0 + i as f64 * 110.0,
            y0 + 14.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{tmax:.0} s</text>"#,
        W - 20.0,
        y0 + PANEL + 12.0
    );
}

pub fn svg(s: &Summary) -> String {
    let h = TOP + 2.0 * PANEL + 80.0;
    let mut out = String::new();
    let _ =
        writeln!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif">"#);
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="18" font-size="13">hare perf: {} producers, {} consumers, {} B, {:.0} msg/s published, {:.0} msg/s consumed</text>"#,
        s.args.producers, s.args.consumers, s.args.size, s.published_per_sec, s.consumed_per_sec
    );
    panel(
        &mut out,
        TOP + 10.0,
        "rate",
        "msg/s",
        &s.samples,
        &[
            ("published/s", "#1f77b4", |x| Some(x.published_per_sec)),
            ("consumed/s", "#ff7f0e", |x| Some(x.consumed_per_sec)),
        ],
    );
    panel(
        &mut out,
        TOP + PANEL + 60.0,
        "latency",
        "ms",
        &s.samples,
        &[
            ("e2e p50", "#2ca02c", |x| x.e2e_p50_ms),
            ("e2e p99", "#d62728", |x| x.e2e_p99_ms),
            ("confirm p50", "#9467bd", |x| x.confirm_p50_ms),
            ("confirm p99", "#8c564b", |x| x.confirm_p99_ms),
        ],
    );
    out.push_str("</svg>\n");
    out
}
