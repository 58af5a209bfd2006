//! Admission webhooks: the `admissionregistration.k8s.io/v1` Validating- and
//! MutatingWebhookConfigurations stored in the server, called over HTTPS with an
//! `admission.k8s.io/v1` AdmissionReview as kube-apiserver does.
//!
//! Owns: matching (rules: operations, apiGroups, apiVersions, resources with
//! subresources, scope; namespaceSelector; objectSelector), the HTTPS call (the
//! webhook's `caBundle` is its only trust root; `timeoutSeconds`, default 10, max 30)
//! and the answer (`allowed`, `status`, a mutating webhook's base64 `JSONPatch`).
//! `failurePolicy` (default Fail) decides what a call that fails does: Fail refuses the
//! request with 500 "failed calling webhook", Ignore lets it through.
//! Invariants: webhooks are never called for the webhook configurations themselves
//! (a broken webhook cannot lock itself in); a denial is the webhook's status code
//! (at least 400) and the message `admission webhook "NAME" denied the request: MSG`.
//! A `clientConfig.service` reference (namespace, name, port default 443, path) is
//! resolved against the stored Service: a ready address of its EndpointSlices (or its
//! Endpoints) on the Service port's target port, else the Service's clusterIP (or
//! externalName) on the Service port, since no kube-proxy routes here. TLS checks the
//! certificate for `NAME.NAMESPACE.svc`, as kube-apiserver does.
//! Limits (documented differences): matchPolicy is treated as Exact;
//! reinvocationPolicy, matchConditions and sideEffects are ignored.
//! Never: runs on an async thread — callers are inside `block_in_place`, and the call
//! blocks on the current runtime's handle.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::select::LabelSelector;

/// Key prefixes of the two configuration kinds in the store.
pub(crate) const VALIDATING_PREFIX: &str =
    "admissionregistration.k8s.io/validatingwebhookconfigurations/";
pub(crate) const MUTATING_PREFIX: &str =
    "admissionregistration.k8s.io/mutatingwebhookconfigurations/";

const TIMEOUT_DEFAULT_SECS: u64 = 10;
const TIMEOUT_MAX_SECS: u64 = 30;
/// Largest AdmissionReview answer read.
const RESPONSE_MAX_BYTES: usize = 3 << 20;

/// What is being admitted.
#[derive(Debug)]
pub(crate) struct Attributes<'a> {
    /// CREATE, UPDATE or DELETE.
    pub(crate) operation: &'static str,
    pub(crate) group: &'a str,
    pub(crate) version: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) resource: &'a str,
    /// "" or e.g. "status".
    pub(crate) subresource: &'a str,
    pub(crate) namespaced: bool,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    /// The new object (None for DELETE), in the request's version.
    pub(crate) object: Option<&'a Value>,
    /// The current object (None for CREATE).
    pub(crate) old_object: Option<&'a Value>,
    /// Labels of the object's namespace (of the Namespace itself for namespaces).
    pub(crate) namespace_labels: Option<Value>,
    pub(crate) user: &'a str,
    pub(crate) dry_run: bool,
}

fn list_has(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v.as_str() == Some(want)))
}

fn resource_matches(list: &Value, resource: &str, sub: &str) -> bool {
    let full = if sub.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{sub}")
    };
    list.as_array().is_some_and(|l| {
        l.iter().filter_map(Value::as_str).any(|r| {
            r == "*/*"
                || r == full
                || (sub.is_empty() && r == "*")
                || (!sub.is_empty() && r == format!("*/{sub}"))
                || (!sub.is_empty() && r == format!("{resource}/*"))
        })
    })
}

fn rule_matches(rule: &Value, a: &Attributes<'_>) -> bool {
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !a.namespaced,
        "Namespaced" => a.namespaced,
        _ => true,
    };
    scope_ok
        && list_has(&rule["operations"], a.operation)
        && list_has(&rule["apiGroups"], a.group)
        && list_has(&rule["apiVersions"], a.version)
        && resource_matches(&rule["resources"], a.resource, a.subresource)
}

fn selector_matches(sel: &Value, labels: &Value) -> bool {
    if sel.is_null() {
        return true;
    }
    match LabelSelector::from_json(sel) {
        Ok(s) => s.matches(&json!({"metadata": {"labels": labels}})),
        // An invalid selector was refused when stored; never match-all on one.
        Err(_) => false,
    }
}

/// Whether `hook` (one entry of `webhooks`) applies to the request.
pub(crate) fn hook_matches(hook: &Value, a: &Attributes<'_>) -> bool {
    let rules = hook["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !rules.iter().any(|r| rule_matches(r, a)) {
        return false;
    }
    let ns_applies = a.namespaced || a.resource == "namespaces";
    if ns_applies {
        let labels = a.namespace_labels.clone().unwrap_or(Value::Null);
        if !selector_matches(&hook["namespaceSelector"], &labels) {
            return false;
        }
    }
    let obj_sel = &hook["objectSelector"];
    let labels_of = |o: Option<&Value>| {
        o.map(|o| o["metadata"]["labels"].clone())
            .unwrap_or(Value::Null)
    };
    selector_matches(obj_sel, &labels_of(a.object))
        || (a.old_object.is_some() && selector_matches(obj_sel, &labels_of(a.old_object)))
}

/// The AdmissionReview request body.
fn review(uid: &str, a: &Attributes<'_>) -> Value {
    let gvk = json!({"group": a.group, "version": a.version, "kind": a.kind});
    let mut req = json!({
        "uid": uid,
        "kind": gvk,
        "resource": {"group": a.group, "version": a.version, "resource": a.resource},
        "requestKind": gvk,
        "requestResource": {"group": a.group, "version": a.version, "resource": a.resource},
        "name": a.name,
        "operation": a.operation,
        "userInfo": {"username": a.user, "groups": ["system:masters", "system:authenticated"]},
        "object": a.object.cloned().unwrap_or(Value::Null),
        "oldObject": a.old_object.cloned().unwrap_or(Value::Null),
        "dryRun": a.dry_run,
        "options": match a.operation {
            "CREATE" => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
            "UPDATE" => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
            _ => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
        },
    });
    if !a.subresource.is_empty() {
        req["subResource"] = json!(a.subresource);
        req["requestSubResource"] = json!(a.subresource);
    }
    if a.namespaced {
        req["namespace"] = json!(a.namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// The webhook's verdict.
#[derive(Debug)]
pub(crate) enum Verdict {
    Allowed { patch: Option<Value> },
    Denied(ApiError),
}

/// Where a webhook is called: the URL it is known by (in messages), the address to
/// dial and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) server_name: String,
    pub(crate) path: String,
}

fn url_endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("webhook url must be https".into());
    }
    let host = uri.host().ok_or("url has no host")?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Endpoint {
        url: url.to_string(),
        host: bare.clone(),
        port: uri.port_u16().unwrap_or(443),
        server_name: bare,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// The objects a service reference resolves through, read from the store.
pub(crate) trait Services {
    /// The Service `namespace/name`.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
    /// The Endpoints object of that Service.
    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
    /// The EndpointSlices labelled `kubernetes.io/service-name: name`.
    fn endpoint_slices(&self, namespace: &str, name: &str) -> Vec<Arc<Value>>;
}

/// Resolves a webhook's `clientConfig` (url, or service reference) to an endpoint.
pub(crate) fn endpoint(hook: &Value, services: &dyn Services) -> Result<Endpoint, String> {
    let cc = &hook["clientConfig"];
    if let Some(url) = cc["url"].as_str() {
        return url_endpoint(url);
    }
    let svc_ref = &cc["service"];
    let (Some(ns), Some(name)) = (svc_ref["namespace"].as_str(), svc_ref["name"].as_str()) else {
        return Err("clientConfig needs a url or a service".into());
    };
    let port = svc_ref["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    let path = svc_ref["path"].as_str().unwrap_or("/").to_string();
    let server_name = format!("{name}.{ns}.svc");
    let url = format!("https://{server_name}:{port}{path}");
    let svc = services
        .service(ns, name)
        .ok_or_else(|| format!("service \"{name}\" not found"))?;
    let (host, dial_port) = service_address(&svc, port, ns, name, services)?;
    Ok(Endpoint {
        url,
        host,
        port: dial_port,
        server_name,
        path,
    })
}

/// A ready endpoint address of the Service's port `port`, or its clusterIP or
/// externalName when it has none.
fn service_address(
    svc: &Value,
    port: u16,
    ns: &str,
    name: &str,
    services: &dyn Services,
) -> Result<(String, u16), String> {
    let sp = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .ok_or_else(|| format!("no service port {port} found for service \"{name}\""))?;
    let port_name = sp["name"].as_str().unwrap_or("");
    // targetPort: a number, or a container port's name (which only endpoints can tell).
    let target = match &sp["targetPort"] {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse().ok(),
        _ => Some(port),
    };
    for slice in services.endpoint_slices(ns, name) {
        let Some(slice_port) = named_port(&slice["ports"], port_name).or(target) else {
            continue;
        };
        let ready = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
            .find_map(|e| e["addresses"][0].as_str());
        if let Some(addr) = ready {
            return Ok((addr.to_string(), slice_port));
        }
    }
    if let Some(ep) = services.endpoints(ns, name) {
        for subset in ep["subsets"].as_array().into_iter().flatten() {
            let subset_port = named_port(&subset["ports"], port_name).or(target);
            let addr = subset["addresses"][0]["ip"].as_str();
            if let (Some(addr), Some(p)) = (addr, subset_port) {
                return Ok((addr.to_string(), p));
            }
        }
    }
    let spec = &svc["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        if let Some(h) = spec["externalName"].as_str() {
            return Ok((h.to_string(), port));
        }
    }
    match spec["clusterIP"].as_str() {
        Some(ip) if !ip.is_empty() && ip != "None" => Ok((ip.to_string(), port)),
        _ => Err(format!(
            "service \"{ns}/{name}\" has no ready endpoint and no clusterIP"
        )),
    }
}

/// The port number of the endpoint port named `name` (the Service port's name).
fn named_port(ports: &Value, name: &str) -> Option<u16> {
    ports
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str().unwrap_or("") == name)
        .and_then(|p| p["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// Calls one webhook at `at`; `Err` is a failed call (failurePolicy decides).
pub(crate) fn call(hook: &Value, at: &Endpoint, a: &Attributes<'_>) -> Result<Verdict, String> {
    let name = hook["name"].as_str().unwrap_or("");
    let url = at.url.as_str();
    let timeout = hook["timeoutSeconds"]
        .as_u64()
        .unwrap_or(TIMEOUT_DEFAULT_SECS)
        .clamp(1, TIMEOUT_MAX_SECS);
    let ca = hook["clientConfig"]["caBundle"].as_str().unwrap_or("");
    let uid = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&review(&uid, a)).map_err(|e| e.to_string())?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "no async runtime to call the webhook on".to_string())?;
    let answer = handle
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(timeout), post(at, ca, body)).await
        })
        .map_err(|_| format!("Post \"{url}\": context deadline exceeded (timeout {timeout}s)"))?
        .map_err(|e| format!("Post \"{url}\": {e}"))?;
    let response = &answer["response"];
    if response["uid"].as_str() != Some(uid.as_str()) {
        return Err(format!(
            "expected response.uid=\"{uid}\", got \"{}\"",
            response["uid"].as_str().unwrap_or("")
        ));
    }
    if response["allowed"].as_bool() != Some(true) {
        let status = &response["status"];
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c >= 400)
            .unwrap_or(400);
        let denied = format!("admission webhook \"{name}\" denied the request");
        let message = match (status["message"].as_str(), status["reason"].as_str()) {
            (Some(m), _) if !m.is_empty() => format!("{denied}: {m}"),
            (_, Some(r)) if !r.is_empty() => format!("{denied}: {r}"),
            _ => format!("{denied} without explanation"),
        };
        return Ok(Verdict::Denied(ApiError::Admission { code, message }));
    }
    let patch = match response["patch"].as_str() {
        None => None,
        Some(p) => {
            if response["patchType"].as_str() != Some("JSONPatch") {
                return Err("a patch needs patchType JSONPatch".into());
            }
            let bytes =
                crate::tls::base64_decode(p).ok_or_else(|| "patch is not base64".to_string())?;
            Some(serde_json::from_slice(&bytes).map_err(|e| format!("patch: {e}"))?)
        }
    };
    Ok(Verdict::Allowed { patch })
}

/// The failure of a call under `failurePolicy: Fail`.
pub(crate) fn call_failed(hook: &Value, why: &str) -> ApiError {
    ApiError::Admission {
        code: 500,
        message: format!(
            "Internal error occurred: failed calling webhook \"{}\": failed to call webhook: {why}",
            hook["name"].as_str().unwrap_or("")
        ),
    }
}

/// Whether a failed call is ignored (`failurePolicy: Ignore`).
pub(crate) fn ignores_failure(hook: &Value) -> bool {
    hook["failurePolicy"].as_str() == Some("Ignore")
}

fn client_config(ca_b64: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = crate::tls::base64_decode(ca_b64.trim())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| "caBundle is not base64 PEM".to_string())?;
    let mut block = String::new();
    for line in pem.lines() {
        block.push_str(line);
        block.push('\n');
        if line.starts_with("-----END") {
            if let Some(der) = crate::tls::pem_to_der(&block) {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der))
                    .map_err(|e| format!("caBundle: {e}"))?;
            }
            block.clear();
        }
    }
    if roots.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// POSTs `body` to the endpoint and returns the JSON answer.
async fn post(at: &Endpoint, ca: &str, body: Vec<u8>) -> Result<Value, String> {
    let (host, port) = (at.host.as_str(), at.port);
    let server_name = rustls::pki_types::ServerName::try_from(at.server_name.clone())
        .map_err(|e| format!("bad host {}: {e}", at.server_name))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(client_config(ca)?)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(at.path.as_str())
        .header(hyper::header::HOST, format!("{}:{port}", at.server_name))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        Ok(resp) => {
            let status = resp.status();
            let bytes =
                axum::body::to_bytes(axum::body::Body::new(resp.into_body()), RESPONSE_MAX_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
            if !status.is_success() {
                Err(format!(
                    "the server responded with status {}",
                    status.as_u16()
                ))
            } else {
                serde_json::from_slice(&bytes).map_err(|e| format!("decoding the answer: {e}"))
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(obj: &'a Value) -> Attributes<'a> {
        Attributes {
            operation: "CREATE",
            group: "cstor.openebs.io",
            version: "v1",
            kind: "CStorPoolCluster",
            resource: "cstorpoolclusters",
            subresource: "",
            namespaced: true,
            namespace: "openebs",
            name: "p",
            object: Some(obj),
            old_object: None,
            namespace_labels: Some(json!({"team": "storage"})),
            user: "admin",
            dry_run: false,
        }
    }

    #[test]
    fn rules_and_selectors_match_as_kube_apiserver() {
        let obj = json!({"metadata": {"labels": {"tier": "gold"}}});
        let a = attrs(&obj);
        let hook = |rules: Value, ns: Value, os: Value| json!({"name": "h", "rules": rules, "namespaceSelector": ns, "objectSelector": os});
        let rule = json!([{"operations": ["CREATE"], "apiGroups": ["cstor.openebs.io"],
            "apiVersions": ["*"], "resources": ["cstorpoolclusters"], "scope": "Namespaced"}]);
        assert!(hook_matches(
            &hook(rule.clone(), Value::Null, Value::Null),
            &a
        ));
        let delete_only = json!([{"operations": ["DELETE"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["*"]}]);
        assert!(!hook_matches(
            &hook(delete_only, Value::Null, Value::Null),
            &a
        ));
        let cluster = json!([{"operations": ["*"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"}]);
        assert!(!hook_matches(&hook(cluster, Value::Null, Value::Null), &a));
        let status_only = json!([{"operations": ["*"], "apiGroups": ["*"],
            "apiVersions": ["*"], "resources": ["cstorpoolclusters/status"]}]);
        assert!(!hook_matches(
            &hook(status_only, Value::Null, Value::Null),
            &a
        ));
        let ns_sel =
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["storage"]}]});
        assert!(hook_matches(&hook(rule.clone(), ns_sel, Value::Null), &a));
        let ns_other = json!({"matchLabels": {"team": "web"}});
        assert!(!hook_matches(
            &hook(rule.clone(), ns_other, Value::Null),
            &a
        ));
        let os = json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]});
        assert!(!hook_matches(&hook(rule, Value::Null, os), &a));
    }

    struct Fake {
        svc: Value,
        slices: Vec<Value>,
        endpoints: Option<Value>,
    }

    impl Services for Fake {
        fn service(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
            (ns == "w" && name == "hooks").then(|| Arc::new(self.svc.clone()))
        }
        fn endpoints(&self, _: &str, _: &str) -> Option<Arc<Value>> {
            self.endpoints.clone().map(Arc::new)
        }
        fn endpoint_slices(&self, _: &str, _: &str) -> Vec<Arc<Value>> {
            self.slices.iter().cloned().map(Arc::new).collect()
        }
    }

    #[test]
    fn service_references_resolve_like_kube_apiserver() {
        let hook =
            json!({"clientConfig": {"service": {"namespace": "w", "name": "hooks", "path": "/v"}}});
        let mut f = Fake {
            svc: json!({"spec": {"clusterIP": "10.0.0.1", "ports": [
                {"name": "web", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": "hook"}]}}),
            slices: vec![json!({"endpoints": [
                {"addresses": ["127.0.0.5"], "conditions": {"ready": false}},
                {"addresses": ["127.0.0.6"]}],
                "ports": [{"name": "web", "port": 8080}, {"name": "https", "port": 9443}]})],
            endpoints: None,
        };
        let at = endpoint(&hook, &f).unwrap();
        assert_eq!((at.host.as_str(), at.port), ("127.0.0.6", 9443));
        assert_eq!(at.server_name, "hooks.w.svc");
        assert_eq!(at.url, "https://hooks.w.svc:443/v");
        assert_eq!(at.path, "/v");
        f.slices.clear();
        let at = endpoint(&hook, &f).unwrap();
        assert_eq!((at.host.as_str(), at.port), ("10.0.0.1", 443));
        f.endpoints = Some(json!({"subsets": [{"addresses": [{"ip": "127.0.0.7"}],
            "ports": [{"name": "https", "port": 9444}]}]}));
        let at = endpoint(&hook, &f).unwrap();
        assert_eq!((at.host.as_str(), at.port), ("127.0.0.7", 9444));
        let other_port =
            json!({"clientConfig": {"service": {"namespace": "w", "name": "hooks", "port": 8443}}});
        assert!(endpoint(&other_port, &f)
            .unwrap_err()
            .contains("no service port 8443"));
        let missing = json!({"clientConfig": {"service": {"namespace": "w", "name": "nope"}}});
        assert_eq!(
            endpoint(&missing, &f).unwrap_err(),
            "service \"nope\" not found"
        );
        f.endpoints = None;
        f.svc["spec"]["clusterIP"] = json!("None");
        assert!(endpoint(&hook, &f)
            .unwrap_err()
            .contains("no ready endpoint"));
        let url = json!({"clientConfig": {"url": "https://127.0.0.1:8443/x?y=1"}});
        let at = endpoint(&url, &f).unwrap();
        assert_eq!(
            (at.host.as_str(), at.port, at.path.as_str()),
            ("127.0.0.1", 8443, "/x?y=1")
        );
        let plain = json!({"clientConfig": {"url": "http://127.0.0.1/x"}});
        assert!(endpoint(&plain, &f).is_err());
    }
}
