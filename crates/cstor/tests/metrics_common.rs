//! Shared helpers of the metrics tests: scrape `/metrics` over plain HTTP, read samples,
//! and run promtool (`check metrics`, `test rules`) on what our exporters serve.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// GET /metrics from `addr`; None while nothing answers yet.
pub fn try_scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    Some(body.to_owned())
}

/// GET /metrics, waiting up to 20 s for the endpoint.
pub fn scrape(addr: &str) -> String {
    for _ in 0..200 {
        if let Some(t) = try_scrape(addr) {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no /metrics on {addr}");
}

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    /// The series in PromQL/promtool syntax.
    pub fn series(&self) -> String {
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, l.join(","))
    }
}

/// Every sample of an exposition (label values hold no quotes or backslashes here).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The samples named `name` whose labels include every pair of `with`.
pub fn find(text: &str, name: &str, with: &[(&str, &str)]) -> Vec<Sample> {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// The one sample named `name` with labels `with`.
pub fn one(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    let f = find(text, name, with);
    assert_eq!(f.len(), 1, "{name} {with:?}: {f:?}\n{text}");
    f[0].value
}

/// cStor's own names that promtool's lint dislikes, kept verbatim for existing
/// dashboards (docs/metrics.md): the replica counts end in `_count`, and
/// `openebs_volume_uptime` carries cStor's camelCase label `volName`.
const CSTOR_LEGACY_LINT: [(&str, &str); 4] = [
    (
        "openebs_healthy_replica_count",
        "should not have \"_count\" suffix",
    ),
    (
        "openebs_degraded_replica_count",
        "should not have \"_count\" suffix",
    ),
    (
        "openebs_total_replica_count",
        "should not have \"_count\" suffix",
    ),
    (
        "openebs_volume_uptime",
        "label names should be written in 'snake_case'",
    ),
];

/// `promtool check metrics` on an exposition: the complaints allowed are promtool 2.42's
/// "no help text" on `_total` samples (it reads OpenMetrics counters as families of
/// their own) and its lint of cStor's legacy names ([`CSTOR_LEGACY_LINT`]).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        let ok = line.split_once(' ').is_some_and(|(name, why)| {
            (name.ends_with("_total") && why.trim() == "no help text")
                || CSTOR_LEGACY_LINT
                    .iter()
                    .any(|(n, w)| name == *n && why.contains(w))
        });
        assert!(ok, "promtool check metrics: {line}\n{said}\n{text}");
    }
    // Exit 0, or 3 (lint problems) when only the allowed ones were found.
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{said}");
}

/// The seed's PrometheusRule (deploy/monitoring/alerts-cstor.yaml, verbatim) as a
/// Prometheus rule file: its `spec` (groups) de-indented.
pub fn seed_rule_file(dir: &Path) -> std::path::PathBuf {
    let rule = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring/alerts-cstor.yaml"),
    )
    .unwrap();
    let spec = rule.split_once("\nspec:\n").expect("spec").1;
    let groups: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("cstor-rules.yaml");
    std::fs::write(&path, groups + "\n").unwrap();
    path
}

/// `promtool test rules` with `tests` (YAML list items, indented by two) against the
/// seed's rules.
pub fn promtool_test_rules(dir: &Path, tests: &str) {
    let rules = seed_rule_file(dir);
    let file = dir.join("cstor-rules-test.yaml");
    let body = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n{tests}",
        rules.display()
    );
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A promtool alert test: `series` holds `value` for 10 minutes; at `at` the alert
/// `alert` fires with the series' labels plus `severity`, or (`fires` false) does not.
pub fn alert_case(
    s: &Sample,
    value: f64,
    alert: &str,
    at: &str,
    fires: bool,
    summary: &str,
) -> String {
    let mut t = format!(
        "  - interval: 1m\n    input_series:\n      - series: '{}'\n        values: '{value}x12'\n    alert_rule_test:\n      - eval_time: {at}\n        alertname: {alert}\n",
        s.series()
    );
    if fires {
        let sev = if alert == "CStorPoolCapacityHigh" {
            "warning"
        } else {
            "critical"
        };
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        labels.push(format!("severity: {sev}"));
        t.push_str(&format!(
            "        exp_alerts:\n          - exp_labels: {{{}}}\n            exp_annotations: {{summary: \"{summary}\"}}\n",
            labels.join(", ")
        ));
    } else {
        t.push_str("        exp_alerts: []\n");
    }
    t
}
