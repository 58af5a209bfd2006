//! deploy/monitoring on the embedded API server with the real kubectl: the seed's
//! ServiceMonitor and PrometheusRule apply unchanged once the monitoring CRDs are in,
//! next to our Service (label app: cstor-pool, port `exporter`), and the ServiceMonitor
//! selects that Service's port; the Grafana dashboard queries only exported metrics.

mod apiserver_support;

use apiserver_support::kubectl_server;

fn monitoring(file: &str) -> String {
    format!(
        "{}/../../deploy/monitoring/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn seed_servicemonitor_and_prometheusrule_apply_and_select_the_exporter_service() {
    let Some((_dir, s)) = kubectl_server() else {
        return;
    };
    s.ok(&["apply", "-f", &monitoring("crds.yaml")]);
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=20s",
    ]);
    s.ok(&["create", "namespace", "openebs"]);
    for f in [
        "service-cstor-pool.yaml",
        "servicemonitor-cstor.yaml",
        "alerts-cstor.yaml",
    ] {
        s.ok(&["apply", "-f", &monitoring(f)]);
    }
    let json = |args: &[&str]| -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-n", "openebs", "-o", "json"]);
        serde_json::from_str(&s.ok(&a)).unwrap()
    };
    let sm = json(&["get", "servicemonitor", "cstor-pool-metrics"]);
    let svc = json(&["get", "service", "cstor-pool-metrics"]);
    let want = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in want {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "Service lacks label {k}: {svc}"
        );
    }
    let ns = sm["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .unwrap();
    assert!(ns.contains(&svc["metadata"]["namespace"]), "{sm}");
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert_eq!(port, "exporter");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == port && p["port"] == 9500),
        "no port {port} on 9500: {svc}"
    );
    let rule = json(&["get", "prometheusrule", "cstor-alerts"]);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        alerts,
        [
            "CStorPoolDegraded",
            "CStorPoolCapacityHigh",
            "CStorVolumeReplicaDegraded"
        ]
    );
}

/// Every `openebs_*` name the dashboard queries is one docs/metrics.md lists (the
/// exporter tests check that list against real scrapes).
#[test]
fn grafana_dashboard_queries_documented_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("grafana-cstor.json")).unwrap())
            .unwrap();
    let docs = std::fs::read_to_string(format!(
        "{}/../../docs/metrics.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("openebs_") {
                continue;
            }
            let base = ["_bucket", "_total"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|_| !docs.contains(word)))
                .unwrap_or(word);
            assert!(
                docs.contains(base),
                "{word} (in {e}) is not in docs/metrics.md"
            );
        }
    }
}
