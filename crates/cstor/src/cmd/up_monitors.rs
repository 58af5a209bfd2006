//! `cstor up`'s scrape targets, derived from the ServiceMonitor and PodMonitor objects
//! applied to its API server the way prometheus-operator derives a Prometheus
//! configuration from them (docs/cstor-up.md § Metrics and Prometheus), so that
//! `DIR/prometheus/targets.json` scrapes what the monitors select and nothing else.
//!
//! A ServiceMonitor selects Services (`spec.selector`, `spec.namespaceSelector`: `any`,
//! `matchNames`, else its own namespace); each of its `endpoints` names a Service port
//! (`port`) or a target port (`targetPort`), and yields one target per address behind
//! that port: from the Service's Endpoints object when there is one, else from the Pods
//! its `spec.selector` selects that are not terminated and have an IP (what the
//! endpoints controller, absent here, would write). A PodMonitor selects Pods and names a
//! container port (`podMetricsEndpoints[].port`). While no monitor exists, the seed's
//! ServiceMonitor (deploy/monitoring/servicemonitor-cstor.yaml) is used as if applied.
//!
//! Labels as the operator's generated relabelings give them: `job` (the Service's name,
//! or its `jobLabel` label; `NAMESPACE/NAME` of a PodMonitor), `namespace`, `service`,
//! `pod`, `container` (when a container declares the port), `endpoint` (the port name),
//! plus `node` (the Pod's node: every `cstor up` address is a loopback one, so `instance`
//! does not tell nodes apart); `path`, `scheme`, `interval` and `scrapeTimeout` become
//! `__metrics_path__`, `__scheme__`, `__scrape_interval__`, `__scrape_timeout__`.
//!
//! Invariants: the result is a pure function of the listed objects, sorted, so an
//! unchanged cluster rewrites nothing; a monitor field that would change what is scraped
//! but cannot be expressed in a file_sd list (relabelings, TLS, auth, params, ...) is
//! reported, never silently taken as honoured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use cstor_apiserver::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{json, Value};

/// The seed's ServiceMonitor, used while no monitor is applied.
const SEED_SERVICE_MONITOR: &str =
    include_str!("../../../../deploy/monitoring/servicemonitor-cstor.yaml");

/// Endpoint fields prometheus-operator honours that a file_sd target list cannot carry.
const UNSUPPORTED: &[&str] = &[
    "relabelings",
    "metricRelabelings",
    "params",
    "honorLabels",
    "honorTimestamps",
    "tlsConfig",
    "bearerTokenFile",
    "bearerTokenSecret",
    "basicAuth",
    "oauth2",
    "authorization",
    "proxyUrl",
];

/// Prometheus' default scrape timeout, capped to the interval when shorter.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the monitors select.
#[derive(Debug, Default, PartialEq)]
pub struct Resolved {
    /// file_sd target groups, sorted.
    pub groups: Vec<Value>,
    /// Monitor fields not honoured or not understood, one line each.
    pub warnings: Vec<String>,
}

pub(super) fn monitor_kind(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn core_kind(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Every object of a kind, as JSON; none while the kind is not served (its CRD absent).
pub(super) async fn list_all(client: &kube::Client, ar: &ApiResource) -> Result<Vec<Value>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    // Bounded: the supervisor loop that calls this also restarts a stuck API server.
    let listed = tokio::time::timeout(Duration::from_secs(5), api.list(&ListParams::default()))
        .await
        .with_context(|| format!("listing {}: no answer in 5 s", ar.plural))?;
    match listed {
        Ok(l) => l
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).context("encoding a listed object"))
            .collect(),
        Err(e) if cstor_agent::kubeapi::is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", ar.plural)),
    }
}

/// Lists the monitors, Services, Endpoints and Pods and resolves them.
pub async fn resolve_cluster(client: &kube::Client) -> Result<Resolved> {
    let service_monitors =
        list_all(client, &monitor_kind("ServiceMonitor", "servicemonitors")).await?;
    let pod_monitors = list_all(client, &monitor_kind("PodMonitor", "podmonitors")).await?;
    let services = list_all(client, &core_kind("Service", "services")).await?;
    let endpoints = list_all(client, &core_kind("Endpoints", "endpoints")).await?;
    let pods = list_all(client, &core_kind("Pod", "pods")).await?;
    Ok(resolve(&Cluster {
        service_monitors,
        pod_monitors,
        services,
        endpoints,
        pods,
    }))
}

/// The objects a resolution reads.
#[derive(Debug, Default)]
pub struct Cluster {
    pub service_monitors: Vec<Value>,
    pub pod_monitors: Vec<Value>,
    pub services: Vec<Value>,
    pub endpoints: Vec<Value>,
    pub pods: Vec<Value>,
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

fn id(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or("object"),
        meta(o, "namespace"),
        meta(o, "name")
    )
}

/// The seed's ServiceMonitor as an object (it is built in and tested to parse).
fn seed_monitor() -> Result<Value> {
    serde_saphyr::from_str(SEED_SERVICE_MONITOR).context("the built-in ServiceMonitor")
}

/// The targets every monitor selects; the seed's ServiceMonitor when none is applied.
pub fn resolve(c: &Cluster) -> Resolved {
    let mut out = Resolved::default();
    let mut groups = BTreeSet::new();
    let fallback;
    let service_monitors = if c.service_monitors.is_empty() && c.pod_monitors.is_empty() {
        match seed_monitor() {
            Ok(m) => fallback = vec![m],
            Err(e) => {
                out.warnings.push(format!("{e:#}"));
                fallback = Vec::new();
            }
        }
        &fallback
    } else {
        &c.service_monitors
    };
    for m in service_monitors {
        service_monitor(c, m, &mut groups, &mut out.warnings);
    }
    for m in &c.pod_monitors {
        pod_monitor(c, m, &mut groups, &mut out.warnings);
    }
    out.groups = groups
        .into_iter()
        .filter_map(|g| serde_json::from_str(&g).ok())
        .collect();
    out
}

/// The namespaces a monitor's `namespaceSelector` names; None for any.
fn namespaces(m: &Value) -> Option<BTreeSet<String>> {
    let sel = &m["spec"]["namespaceSelector"];
    if sel["any"].as_bool() == Some(true) {
        return None;
    }
    let names: BTreeSet<String> = sel["matchNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    Some(if names.is_empty() {
        BTreeSet::from([meta(m, "namespace").to_owned()])
    } else {
        names
    })
}

/// The objects of `list` in the monitor's namespaces that its `spec.selector` selects.
fn selected<'a>(m: &Value, list: &'a [Value], warnings: &mut Vec<String>) -> Vec<&'a Value> {
    let sel = match LabelSelector::from_json(&m["spec"]["selector"]) {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("{}: spec.selector: {e}", id(m)));
            return Vec::new();
        }
    };
    let ns = namespaces(m);
    list.iter()
        .filter(|o| ns.as_ref().is_none_or(|n| n.contains(meta(o, "namespace"))))
        .filter(|o| sel.matches(o))
        .collect()
}

/// A Prometheus duration (`30s`, `1m30s`, `500ms`).
fn prom_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, secs) = [
            ("ms", 0),
            ("y", 365 * 86400),
            ("w", 7 * 86400),
            ("d", 86400),
            ("h", 3600),
            ("m", 60),
            ("s", 1),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += if unit == "ms" {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n.checked_mul(secs)?)
        };
    }
    Some(total)
}

/// The scrape parameters of one monitor endpoint as special labels, or why not.
fn scrape_labels(m: &Value, ep: &Value, at: &str) -> Result<BTreeMap<String, String>, String> {
    let mut l = BTreeMap::new();
    let path = ep["path"].as_str().unwrap_or("/metrics");
    if !path.starts_with('/') {
        return Err(format!(
            "{} {at}.path {path:?}: not an absolute path",
            id(m)
        ));
    }
    l.insert("__metrics_path__".into(), path.into());
    let scheme = ep["scheme"].as_str().unwrap_or("http");
    if scheme != "http" && scheme != "https" {
        return Err(format!("{} {at}.scheme {scheme:?}: http or https", id(m)));
    }
    l.insert("__scheme__".into(), scheme.into());
    let duration = |f: &str| -> Result<Option<(String, Duration)>, String> {
        match ep[f].as_str() {
            None => Ok(None),
            Some(s) => match prom_duration(s) {
                Some(d) if !d.is_zero() => Ok(Some((s.to_owned(), d))),
                _ => Err(format!("{} {at}.{f} {s:?}: not a duration", id(m))),
            },
        }
    };
    let interval = duration("interval")?;
    let timeout = duration("scrapeTimeout")?;
    if let Some((s, _)) = &interval {
        l.insert("__scrape_interval__".into(), s.clone());
    }
    // Prometheus refuses a target whose timeout exceeds its interval: without a timeout
    // of its own, a short interval gets the interval as timeout.
    match (&interval, timeout) {
        (Some((_, i)), Some((_, t))) if t > *i => {
            return Err(format!(
                "{} {at}: scrapeTimeout longer than interval",
                id(m)
            ));
        }
        (_, Some((s, _))) => {
            l.insert("__scrape_timeout__".into(), s);
        }
        (Some((s, i)), None) if *i < DEFAULT_TIMEOUT => {
            l.insert("__scrape_timeout__".into(), s.clone());
        }
        _ => {}
    }
    Ok(l)
}

/// [`scrape_labels`] of one monitor endpoint, its unsupported fields reported; None
/// (reported) when a field cannot be read.
fn endpoint_labels(
    m: &Value,
    ep: &Value,
    at: &str,
    warnings: &mut Vec<String>,
) -> Option<BTreeMap<String, String>> {
    unsupported(m, ep, at, warnings);
    scrape_labels(m, ep, at).map_err(|e| warnings.push(e)).ok()
}

fn unsupported(m: &Value, ep: &Value, at: &str, warnings: &mut Vec<String>) {
    for f in UNSUPPORTED {
        if !ep[*f].is_null() {
            warnings.push(format!(
                "{} {at}.{f}: not applied by cstor up's target list (scraped without it)",
                id(m)
            ));
        }
    }
}

/// A container port of `pod` named `name` or numbered `number`: (container, port).
fn container_port<'a>(
    pod: &'a Value,
    name: Option<&str>,
    number: Option<i64>,
) -> Option<(&'a str, i64)> {
    pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
        c["ports"].as_array()?.iter().find_map(|p| {
            let n = p["containerPort"].as_i64()?;
            let hit = match (name, number) {
                (Some(want), _) => p["name"].as_str() == Some(want),
                (None, Some(want)) => n == want,
                (None, None) => false,
            };
            hit.then(|| (c["name"].as_str().unwrap_or(""), n))
        })
    })
}

/// Whether the endpoints controller would list this Pod: it has an IP and is neither
/// terminated nor being deleted.
fn serving(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    !pod["status"]["podIP"].as_str().unwrap_or("").is_empty()
        && phase != "Failed"
        && phase != "Succeeded"
        && pod["metadata"]["deletionTimestamp"].is_null()
}

fn insert_group(groups: &mut BTreeSet<String>, address: String, labels: &BTreeMap<String, String>) {
    let g = json!({"targets": [address], "labels": labels});
    groups.insert(g.to_string());
}

/// Formats `ip:port` (brackets for IPv6).
fn address(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The Pod named `name` in `ns`.
fn pod<'a>(c: &'a Cluster, ns: &str, name: &str) -> Option<&'a Value> {
    c.pods
        .iter()
        .find(|p| meta(p, "namespace") == ns && meta(p, "name") == name)
}

fn pod_labels(labels: &mut BTreeMap<String, String>, pod: &Value, container: Option<&str>) {
    labels.insert("pod".into(), meta(pod, "name").into());
    if let Some(n) = pod["spec"]["nodeName"].as_str() {
        labels.insert("node".into(), n.into());
    }
    if let Some(c) = container.filter(|c| !c.is_empty()) {
        labels.insert("container".into(), c.into());
    }
}

fn service_monitor(
    c: &Cluster,
    m: &Value,
    groups: &mut BTreeSet<String>,
    warnings: &mut Vec<String>,
) {
    let services = selected(m, &c.services, warnings);
    let job_label = m["spec"]["jobLabel"].as_str();
    for (i, ep) in m["spec"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.endpoints[{i}]");
        let Some(base) = endpoint_labels(m, ep, &at, warnings) else {
            continue;
        };
        let port_name = ep["port"].as_str();
        let target_port = &ep["targetPort"];
        if port_name.is_none() && target_port.is_null() {
            warnings.push(format!("{} {at}: neither port nor targetPort", id(m)));
            continue;
        }
        for svc in &services {
            let (ns, name) = (meta(svc, "namespace"), meta(svc, "name"));
            let svc_port = svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| match port_name {
                    Some(want) => p["name"].as_str() == Some(want),
                    None => match target_port {
                        Value::Number(n) => {
                            p["targetPort"].as_i64().or(p["port"].as_i64()) == n.as_i64()
                        }
                        Value::String(s) => p["targetPort"].as_str() == Some(s),
                        _ => false,
                    },
                });
            let Some(svc_port) = svc_port else { continue };
            let mut labels = base.clone();
            let job = job_label
                .and_then(|k| svc["metadata"]["labels"][k].as_str())
                .unwrap_or(name);
            labels.insert("job".into(), job.into());
            labels.insert("namespace".into(), ns.into());
            labels.insert("service".into(), name.into());
            if let Some(p) = svc_port["name"].as_str().filter(|p| !p.is_empty()) {
                labels.insert("endpoint".into(), p.into());
            }
            let eps = c
                .endpoints
                .iter()
                .find(|e| meta(e, "namespace") == ns && meta(e, "name") == name);
            match eps {
                Some(e) => from_endpoints(c, e, svc_port, &labels, groups),
                None => from_pods(c, svc, svc_port, &labels, groups),
            }
        }
    }
}

/// Targets from an Endpoints object: every address of the subsets carrying the port.
fn from_endpoints(
    c: &Cluster,
    e: &Value,
    svc_port: &Value,
    base: &BTreeMap<String, String>,
    groups: &mut BTreeSet<String>,
) {
    let ns = meta(e, "namespace");
    for subset in e["subsets"].as_array().into_iter().flatten() {
        let port =
            subset["ports"].as_array().into_iter().flatten().find(|p| {
                p["name"].as_str().unwrap_or("") == svc_port["name"].as_str().unwrap_or("")
            });
        let Some(port) = port.and_then(|p| p["port"].as_i64()) else {
            continue;
        };
        let addresses = ["addresses", "notReadyAddresses"]
            .into_iter()
            .flat_map(|k| subset[k].as_array().into_iter().flatten());
        for a in addresses {
            let Some(ip) = a["ip"].as_str() else { continue };
            let mut labels = base.clone();
            if let Some(n) = a["nodeName"].as_str() {
                labels.insert("node".into(), n.into());
            }
            let target = &a["targetRef"];
            if target["kind"] == "Pod" {
                let pname = target["name"].as_str().unwrap_or("");
                match pod(c, target["namespace"].as_str().unwrap_or(ns), pname) {
                    Some(p) => {
                        let cont = container_port(p, None, Some(port)).map(|(c, _)| c);
                        pod_labels(&mut labels, p, cont);
                    }
                    None => {
                        labels.insert("pod".into(), pname.into());
                    }
                }
            }
            insert_group(groups, address(ip, port), &labels);
        }
    }
}

/// Targets from the Pods a Service selects (no Endpoints object: what the endpoints
/// controller would list).
fn from_pods(
    c: &Cluster,
    svc: &Value,
    svc_port: &Value,
    base: &BTreeMap<String, String>,
    groups: &mut BTreeSet<String>,
) {
    let Some(sel) = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())
    else {
        return; // a Service without a selector has only the Endpoints someone writes
    };
    let ns = meta(svc, "namespace");
    let pods = c.pods.iter().filter(|p| {
        meta(p, "namespace") == ns
            && serving(p)
            && sel
                .iter()
                .all(|(k, v)| p["metadata"]["labels"][k].as_str() == v.as_str())
    });
    for p in pods {
        let (cont, port) = match &svc_port["targetPort"] {
            Value::String(name) => match container_port(p, Some(name.as_str()), None) {
                Some((c, n)) => (Some(c), n),
                None => continue, // no such container port: the controller skips it too
            },
            t => {
                let Some(n) = t.as_i64().or(svc_port["port"].as_i64()) else {
                    continue;
                };
                (container_port(p, None, Some(n)).map(|(c, _)| c), n)
            }
        };
        let mut labels = base.clone();
        pod_labels(&mut labels, p, cont);
        let ip = p["status"]["podIP"].as_str().unwrap_or("");
        insert_group(groups, address(ip, port), &labels);
    }
}

fn pod_monitor(c: &Cluster, m: &Value, groups: &mut BTreeSet<String>, warnings: &mut Vec<String>) {
    let pods = selected(m, &c.pods, warnings);
    let job_label = m["spec"]["jobLabel"].as_str();
    let own_job = format!("{}/{}", meta(m, "namespace"), meta(m, "name"));
    let eps = m["spec"]["podMetricsEndpoints"].as_array();
    for (i, ep) in eps.into_iter().flatten().enumerate() {
        let at = format!("spec.podMetricsEndpoints[{i}]");
        let Some(base) = endpoint_labels(m, ep, &at, warnings) else {
            continue;
        };
        let (name, number) = match (&ep["port"], &ep["portNumber"], &ep["targetPort"]) {
            (Value::String(n), _, _) => (Some(n.as_str()), None),
            (_, Value::Number(n), _) | (_, _, Value::Number(n)) => (None, n.as_i64()),
            (_, _, Value::String(n)) => (Some(n.as_str()), None),
            _ => {
                warnings.push(format!("{} {at}: no port, portNumber or targetPort", id(m)));
                continue;
            }
        };
        for p in pods.iter().filter(|p| serving(p)) {
            let (cont, port) = match (container_port(p, name, number), number) {
                (Some((c, n)), _) => (Some(c), n),
                (None, Some(n)) => (None, n),
                (None, None) => continue,
            };
            let mut labels = base.clone();
            let job = job_label
                .and_then(|k| p["metadata"]["labels"][k].as_str())
                .unwrap_or(&own_job);
            labels.insert("job".into(), job.into());
            labels.insert("namespace".into(), meta(p, "namespace").into());
            if let Some(n) = name {
                labels.insert("endpoint".into(), n.into());
            }
            pod_labels(&mut labels, p, cont);
            let ip = p["status"]["podIP"].as_str().unwrap_or("");
            insert_group(groups, address(ip, port), &labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_pod(node: &str, ip: &str, phase: &str) -> Value {
        json!({"kind": "Pod", "metadata": {"name": format!("cstor-{node}"), "namespace": "openebs",
                "labels": {"app": "cstor-pool"}},
               "spec": {"nodeName": node, "containers": [{"name": "cstor-pool",
                "ports": [{"name": "exporter", "containerPort": 9500}]}]},
               "status": {"phase": phase, "podIP": ip}})
    }

    fn service() -> Value {
        let mut s: Value = serde_saphyr::from_str(include_str!(
            "../../../../deploy/monitoring/service-cstor-pool.yaml"
        ))
        .unwrap();
        s["kind"] = "Service".into();
        s
    }

    fn cluster() -> Cluster {
        Cluster {
            services: vec![service()],
            pods: vec![
                agent_pod("node-1", "127.0.0.2", "Running"),
                agent_pod("node-2", "127.0.0.3", "Running"),
                agent_pod("node-3", "127.0.0.4", "Failed"),
            ],
            ..Cluster::default()
        }
    }

    fn targets(r: &Resolved) -> Vec<(String, String)> {
        r.groups
            .iter()
            .map(|g| {
                (
                    g["targets"][0].as_str().unwrap().to_owned(),
                    g["labels"]["node"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_seed_monitor_stands_in_while_none_is_applied() {
        let r = resolve(&cluster());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            targets(&r),
            [
                ("127.0.0.2:9500".to_owned(), "node-1".to_owned()),
                ("127.0.0.3:9500".to_owned(), "node-2".to_owned())
            ]
        );
        let l = &r.groups[0]["labels"];
        assert_eq!(
            *l,
            json!({"job": "cstor-pool-metrics", "namespace": "openebs",
                   "service": "cstor-pool-metrics", "endpoint": "exporter",
                   "pod": "cstor-node-1", "container": "cstor-pool", "node": "node-1",
                   "__metrics_path__": "/metrics", "__scheme__": "http",
                   "__scrape_interval__": "30s"})
        );
    }

    #[test]
    fn selectors_ports_namespaces_and_endpoints_objects_are_honoured() {
        let mut c = cluster();
        let mut m = seed_monitor().unwrap();
        m["spec"]["endpoints"] = json!([{"port": "exporter", "interval": "1s", "path": "/m",
                                          "relabelings": [{"action": "drop"}]}]);
        c.service_monitors = vec![m.clone()];
        let r = resolve(&c);
        assert_eq!(targets(&r).len(), 2);
        let l = &r.groups[0]["labels"];
        assert_eq!(l["__scrape_interval__"], "1s");
        assert_eq!(l["__scrape_timeout__"], "1s", "capped to the interval");
        assert_eq!(l["__metrics_path__"], "/m");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("relabelings"), "{:?}", r.warnings);

        // Another port name, label or namespace: nothing.
        for (path, v) in [
            ("/spec/endpoints/0/port", json!("metrics")),
            ("/spec/selector", json!({"matchLabels": {"app": "other"}})),
            (
                "/spec/namespaceSelector",
                json!({"matchNames": ["default"]}),
            ),
        ] {
            let mut m2 = m.clone();
            *m2.pointer_mut(path).unwrap() = v;
            c.service_monitors = vec![m2];
            assert!(resolve(&c).groups.is_empty(), "{path}");
        }
        // matchExpressions and `any` select it again.
        let mut m3 = m.clone();
        m3["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["cstor-pool"]}]});
        m3["spec"]["namespaceSelector"] = json!({"any": true});
        m3["metadata"]["namespace"] = "monitoring".into();
        c.service_monitors = vec![m3];
        assert_eq!(resolve(&c).groups.len(), 2);

        // An Endpoints object, when there is one, is what counts.
        c.service_monitors = vec![m];
        c.endpoints = vec![json!({"kind": "Endpoints",
            "metadata": {"name": "cstor-pool-metrics", "namespace": "openebs"},
            "subsets": [{"addresses": [{"ip": "10.0.0.9", "nodeName": "n9",
                          "targetRef": {"kind": "Pod", "name": "gone", "namespace": "openebs"}}],
                         "ports": [{"name": "exporter", "port": 9501}]}]})];
        let r = resolve(&c);
        assert_eq!(targets(&r), [("10.0.0.9:9501".to_owned(), "n9".to_owned())]);
        assert_eq!(r.groups[0]["labels"]["pod"], "gone");
    }

    #[test]
    fn pod_monitors_and_bad_fields() {
        let mut c = cluster();
        c.pod_monitors = vec![json!({"kind": "PodMonitor",
            "metadata": {"name": "agents", "namespace": "openebs"},
            "spec": {"selector": {"matchLabels": {"app": "cstor-pool"}},
                     "podMetricsEndpoints": [{"port": "exporter"}, {"port": "exporter", "interval": "soon"}]}})];
        let r = resolve(&c);
        // A PodMonitor alone: the seed's ServiceMonitor is not added.
        assert_eq!(targets(&r).len(), 2, "{:?}", r.groups);
        assert_eq!(r.groups[0]["labels"]["job"], "openebs/agents");
        assert_eq!(r.groups[0]["labels"]["container"], "cstor-pool");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("interval \"soon\""),
            "{:?}",
            r.warnings
        );
        let mut m = seed_monitor().unwrap();
        m["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "Near"}]});
        c.service_monitors = vec![m];
        let r = resolve(&c);
        assert!(
            r.warnings.iter().any(|w| w.contains("spec.selector")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn durations() {
        assert_eq!(prom_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(prom_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(prom_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(prom_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "1x", "-1s"] {
            assert_eq!(prom_duration(bad), None, "{bad}");
        }
    }
}
